//! Capabilities: every one dropped from the bounding, effective, permitted, inheritable and
//! ambient sets except an opt-in list, which a service that switches to its own user keeps
//! across the switch and the exec (as ambient capabilities).

/// The Linux capability names, `CAP_NAMES[n]` being capability `n` (capabilities(7)).
pub const CAP_NAMES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// The bit mask of the named capabilities.
pub fn mask_of(names: &[String]) -> Result<u64, String> {
    names.iter().try_fold(0u64, |mask, name| {
        let number = CAP_NAMES
            .iter()
            .position(|known| known == name)
            .ok_or_else(|| format!("unknown capability {name:?}"))?;
        Ok(mask | (1 << number))
    })
}

/// What the child does with capabilities, decided before the fork.
#[derive(Debug, Clone, Copy)]
pub struct CapPlan {
    /// Capabilities kept.
    pub keep: u64,
    /// The highest capability number this kernel knows.
    pub last_cap: u32,
    /// Whether the bounding set can be changed (root).
    pub root: bool,
    /// Whether the child switches to another user (keep-caps needed for `keep`).
    pub switches_user: bool,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

impl CapPlan {
    pub fn new(keep: u64, root: bool, switches_user: bool) -> CapPlan {
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(CAP_NAMES.len() as u32 - 1);
        CapPlan {
            keep,
            last_cap,
            root,
            switches_user,
        }
    }

    /// Drops the bounding set down to `keep` and asks to keep the permitted set across the
    /// user switch when something is kept.
    pub fn before_user_switch(&self) -> Result<(), i32> {
        if !self.root {
            return Ok(());
        }
        for cap in 0..=self.last_cap {
            if cap < 64 && self.keep & (1 << cap) != 0 {
                continue;
            }
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
                let errno = super::errno();
                if errno != libc::EINVAL {
                    return Err(errno);
                }
            }
        }
        if self.keep != 0 && self.switches_user {
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
                return Err(super::errno());
            }
        }
        Ok(())
    }

    /// Sets effective, permitted and inheritable to `keep` and raises each kept capability
    /// into the ambient set, so that it survives exec for a user that is not root.
    pub fn after_user_switch(&self) -> Result<(), i32> {
        // SAFETY: prctl with integer arguments.
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
        }
        let low = self.keep as u32;
        let high = (self.keep >> 32) as u32;
        let mut header = CapHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [
            CapData {
                effective: low,
                permitted: low,
                inheritable: low,
            },
            CapData {
                effective: high,
                permitted: high,
                inheritable: high,
            },
        ];
        // SAFETY: capset with a v3 header and two data structs.
        if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
            return Err(super::errno());
        }
        for cap in 0..64u32 {
            if self.keep & (1 << cap) == 0 {
                continue;
            }
            let raise = libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong;
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_CAP_AMBIENT, raise, cap as libc::c_ulong, 0, 0) } != 0
            {
                return Err(super::errno());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_their_numbers() {
        assert_eq!(mask_of(&["net_bind_service".into()]).unwrap(), 1 << 10);
        assert_eq!(
            mask_of(&["sys_admin".into(), "chown".into()]).unwrap(),
            (1 << 21) | 1
        );
        assert!(mask_of(&["cap_everything".into()]).is_err());
        assert_eq!(CAP_NAMES[40], "checkpoint_restore");
    }
}
