//! The system call filter: a classic BPF program, built once before the fork, that answers
//! EPERM to the denied system calls (and to every call of another architecture's ABI) and
//! allows the rest. Hand-built: a deny list is a row of comparisons, no crate needed.

/// `SECCOMP_RET_*` and BPF opcodes (linux/seccomp.h, linux/filter.h).
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS
const JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const JGE_K: u16 = 0x05 | 0x30; // BPF_JMP | BPF_JGE | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K
/// Offsets in `struct seccomp_data`.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
/// x32 system calls on x86_64 carry this bit: refused as a whole.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The number of a system call by name, on this architecture; `None` for one it lacks.
pub fn syscall_number(name: &str) -> Option<libc::c_long> {
    let number = match name {
        "init_module" => libc::SYS_init_module,
        "finit_module" => libc::SYS_finit_module,
        "delete_module" => libc::SYS_delete_module,
        "kexec_load" => libc::SYS_kexec_load,
        "kexec_file_load" => libc::SYS_kexec_file_load,
        "reboot" => libc::SYS_reboot,
        "mount" => libc::SYS_mount,
        "umount2" => libc::SYS_umount2,
        "pivot_root" => libc::SYS_pivot_root,
        "move_mount" => libc::SYS_move_mount,
        "open_tree" => libc::SYS_open_tree,
        "fsopen" => libc::SYS_fsopen,
        "fsmount" => libc::SYS_fsmount,
        "fsconfig" => libc::SYS_fsconfig,
        "fspick" => libc::SYS_fspick,
        "pidfd_getfd" => libc::SYS_pidfd_getfd,
        "mount_setattr" => libc::SYS_mount_setattr,
        "swapon" => libc::SYS_swapon,
        "swapoff" => libc::SYS_swapoff,
        "ptrace" => libc::SYS_ptrace,
        "process_vm_readv" => libc::SYS_process_vm_readv,
        "process_vm_writev" => libc::SYS_process_vm_writev,
        "bpf" => libc::SYS_bpf,
        "perf_event_open" => libc::SYS_perf_event_open,
        "keyctl" => libc::SYS_keyctl,
        "add_key" => libc::SYS_add_key,
        "request_key" => libc::SYS_request_key,
        "acct" => libc::SYS_acct,
        "settimeofday" => libc::SYS_settimeofday,
        "clock_settime" => libc::SYS_clock_settime,
        "clock_adjtime" => libc::SYS_clock_adjtime,
        "adjtimex" => libc::SYS_adjtimex,
        "syslog" => libc::SYS_syslog,
        "quotactl" => libc::SYS_quotactl,
        "lookup_dcookie" => libc::SYS_lookup_dcookie,
        "open_by_handle_at" => libc::SYS_open_by_handle_at,
        "name_to_handle_at" => libc::SYS_name_to_handle_at,
        "userfaultfd" => libc::SYS_userfaultfd,
        "unshare" => libc::SYS_unshare,
        "setns" => libc::SYS_setns,
        "vhangup" => libc::SYS_vhangup,
        "personality" => libc::SYS_personality,
        "io_uring_setup" => libc::SYS_io_uring_setup,
        "io_uring_enter" => libc::SYS_io_uring_enter,
        "io_uring_register" => libc::SYS_io_uring_register,
        "chroot" => libc::SYS_chroot,
        "sethostname" => libc::SYS_sethostname,
        "setdomainname" => libc::SYS_setdomainname,
        #[cfg(target_arch = "x86_64")]
        "iopl" => libc::SYS_iopl,
        #[cfg(target_arch = "x86_64")]
        "ioperm" => libc::SYS_ioperm,
        #[cfg(target_arch = "x86_64")]
        "uselib" => libc::SYS_uselib,
        _ => return None,
    };
    Some(number)
}

/// Names this architecture does not have: nothing to refuse.
const ABSENT_HERE: &[&str] = &["iopl", "ioperm", "uselib"];

/// A compiled filter; empty when nothing is denied (then nothing is installed).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    program: Vec<libc::sock_filter>,
}

fn statement(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

impl Filter {
    /// Compiles the program that refuses `denied` (names) with EPERM.
    pub fn compile(denied: &[String]) -> Result<Filter, String> {
        let mut numbers = Vec::new();
        for name in denied {
            match syscall_number(name) {
                Some(number) => numbers.push(number as u32),
                None if ABSENT_HERE.contains(&name.as_str()) => {}
                None => return Err(format!("unknown system call {name:?} in the filter")),
            }
        }
        numbers.sort_unstable();
        numbers.dedup();
        if numbers.is_empty() {
            return Ok(Filter::default());
        }
        if numbers.len() > 200 {
            return Err("too many system calls in the filter".into());
        }
        let deny = RET_ERRNO | libc::EPERM as u32;
        let mut program = vec![
            statement(LD_W_ABS, OFFSET_ARCH),
            // Another ABI (i386 on x86_64): refused as a whole.
            jump(JEQ_K, AUDIT_ARCH, 1, 0),
            statement(RET_K, deny),
            statement(LD_W_ABS, OFFSET_NR),
        ];
        #[cfg(target_arch = "x86_64")]
        {
            let to_deny = numbers.len() as u8 + 1;
            program.push(jump(JGE_K, X32_SYSCALL_BIT, to_deny, 0));
        }
        let count = numbers.len();
        for (position, number) in numbers.into_iter().enumerate() {
            // Past the remaining comparisons and the allow: the deny.
            let to_deny = (count - position) as u8;
            program.push(jump(JEQ_K, number, to_deny, 0));
        }
        program.push(statement(RET_K, RET_ALLOW));
        program.push(statement(RET_K, deny));
        Ok(Filter { program })
    }

    pub fn is_empty(&self) -> bool {
        self.program.is_empty()
    }

    /// Installs the filter on the calling thread (no new privileges must be set, or the
    /// caller have CAP_SYS_ADMIN). Async-signal-safe.
    pub fn install(&self) -> Result<(), i32> {
        if self.program.is_empty() {
            return Ok(());
        }
        let program = libc::sock_fprog {
            len: self.program.len() as u16,
            filter: self.program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: a valid program that outlives the call.
        let result = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &program as *const libc::sock_fprog as libc::c_ulong,
                0,
                0,
            )
        };
        if result != 0 {
            return Err(super::errno());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_bow_spec_can_deny_has_a_number_here() {
        // The names come from bow-spec; this crate does not depend on it, so the agent's
        // tests check the two lists agree. Here: the table itself.
        for name in [
            "ptrace",
            "mount",
            "init_module",
            "bpf",
            "keyctl",
            "io_uring_setup",
        ] {
            assert!(syscall_number(name).is_some(), "{name}");
        }
        assert!(Filter::compile(&["no_such_call".into()]).is_err());
        assert!(Filter::compile(&[]).unwrap().is_empty());
    }

    #[test]
    fn the_program_jumps_to_the_deny_from_every_comparison() {
        let filter = Filter::compile(&["ptrace".into(), "mount".into(), "bpf".into()]).unwrap();
        let program = &filter.program;
        let deny = program.len() - 1;
        for (position, instruction) in program.iter().enumerate() {
            if instruction.code == JEQ_K && instruction.k != AUDIT_ARCH {
                assert_eq!(position + 1 + instruction.jt as usize, deny);
            }
        }
        assert_eq!(program[deny - 1].k, RET_ALLOW);
    }

    #[test]
    fn a_filtered_child_gets_eperm_and_others_run() {
        // Fork a child, install a filter denying getppid... (not in bow's lists) is not
        // possible by name; deny `acct` and `setns`, which an unprivileged call fails anyway
        // with another errno: EPERM shows the filter answered.
        let filter = Filter::compile(&["setns".into()]).unwrap();
        // SAFETY: the child only makes system calls and _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if filter.install().is_err() {
                    libc::_exit(10);
                }
                let result = libc::syscall(libc::SYS_setns, -1, 0);
                let errno = *libc::__errno_location();
                // Without the filter setns(-1) is EBADF.
                libc::_exit(if result == -1 && errno == libc::EPERM {
                    0
                } else {
                    11
                });
            }
        }
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "{status}");
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }
}
