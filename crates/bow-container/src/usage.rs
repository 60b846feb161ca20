//! What a container uses, read from its cgroup (v1 hierarchies with the engine's cgroupfs
//! layout, `docker/<id>`; the systemd layout, `system.slice/docker-<id>.scope`).

use bow_driver::Usage;

pub fn read(container_id: &str) -> Usage {
    let paths = |controller: &str, file: &str| {
        [
            format!("/sys/fs/cgroup/{controller}/docker/{container_id}/{file}"),
            format!("/sys/fs/cgroup/{controller}/system.slice/docker-{container_id}.scope/{file}"),
        ]
    };
    let first = |candidates: [String; 2]| {
        candidates.iter().find_map(|path| {
            std::fs::read_to_string(path)
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    Usage {
        memory_bytes: first(paths("memory", "memory.usage_in_bytes")),
        cpu_micros: first(paths("cpuacct", "cpuacct.usage")).map(|nanos| nanos / 1000),
        // The engine runs the container's processes in their own pid namespace; their
        // descriptors are not counted.
        open_fds: None,
    }
}
