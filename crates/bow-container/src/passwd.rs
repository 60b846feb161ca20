//! The uid and gid of a user inside an image (for the ownership of its secret files): a
//! number is taken as is; a name is looked up in the container's own `/etc/passwd` and
//! `/etc/group`, read through the engine before the container starts.

use bollard::Docker;
use bollard::query_parameters::DownloadFromContainerOptionsBuilder;
use futures_util::StreamExt;

/// `user[:group]` inside container `id` → (uid, gid).
pub async fn resolve(docker: &Docker, id: &str, user: &str) -> Result<(u32, u32), String> {
    let (user, group) = match user.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (user, None),
    };
    let (uid, primary_gid) = match user.parse::<u32>() {
        Ok(uid) => (uid, None),
        Err(_) if user == "root" => (0, Some(0)),
        Err(_) => {
            let passwd = read_file(docker, id, "/etc/passwd").await?;
            let (uid, gid) = lookup(&passwd, user, 2)
                .ok_or_else(|| format!("no user {user} in its /etc/passwd"))?;
            (uid, Some(gid))
        }
    };
    let gid = match group {
        None => primary_gid.unwrap_or(uid),
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = read_file(docker, id, "/etc/group").await?;
                lookup(&groups, group, 2)
                    .map(|(gid, _)| gid)
                    .ok_or_else(|| format!("no group {group} in its /etc/group"))?
            }
        },
    };
    Ok((uid, gid))
}

/// The numeric fields after `name:x:` in a passwd/group style file.
fn lookup(text: &str, name: &str, first: usize) -> Option<(u32, u32)> {
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.first() != Some(&name) {
            return None;
        }
        let a = fields.get(first)?.parse().ok()?;
        let b = fields
            .get(first + 1)
            .and_then(|f| f.parse().ok())
            .unwrap_or(a);
        Some((a, b))
    })
}

/// One file of the container, out of the tar archive the engine sends.
async fn read_file(docker: &Docker, id: &str, path: &str) -> Result<String, String> {
    let options = DownloadFromContainerOptionsBuilder::default()
        .path(path)
        .build();
    let mut stream = docker.download_from_container(id, Some(options));
    let mut archive = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| format!("cannot read {path}: {}", crate::engine::message(&e)))?;
        archive.extend_from_slice(&chunk);
        if archive.len() > 4 << 20 {
            return Err(format!("{path} is larger than 4 MiB"));
        }
    }
    first_member(&archive).ok_or_else(|| format!("cannot read {path}: not a tar archive"))
}

/// The content of the first member of a ustar archive.
fn first_member(archive: &[u8]) -> Option<String> {
    let header = archive.get(..512)?;
    let size_field = std::str::from_utf8(&header[124..136]).ok()?;
    let size =
        usize::from_str_radix(size_field.trim_matches(|c: char| c == '\0' || c == ' '), 8).ok()?;
    let body = archive.get(512..512 + size)?;
    Some(String::from_utf8_lossy(body).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_in_passwd_and_group_files() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
        assert_eq!(lookup(passwd, "app", 2), Some((1000, 1001)));
        assert_eq!(lookup(passwd, "nobody", 2), None);
    }

    #[test]
    fn the_first_member_of_a_tar_is_read() {
        let mut archive = vec![0u8; 1024];
        archive[..6].copy_from_slice(b"passwd");
        archive[124..135].copy_from_slice(b"00000000005");
        archive[512..517].copy_from_slice(b"hello");
        assert_eq!(first_member(&archive).as_deref(), Some("hello"));
    }
}
