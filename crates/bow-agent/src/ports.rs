//! Free loopback ports for instances' `PORT`.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::sync::Mutex;

/// Hands out ports the kernel says are free, never one of the last few it handed out (an
/// instance may not have bound its port yet).
#[derive(Default)]
pub struct PortPicker {
    recent: Mutex<VecDeque<u16>>,
}

impl PortPicker {
    pub fn pick(&self) -> std::io::Result<u16> {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..64 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            if !recent.contains(&port) {
                recent.push_back(port);
                if recent.len() > 256 {
                    recent.pop_front();
                }
                return Ok(port);
            }
        }
        Err(std::io::Error::other("no free loopback port"))
    }
}
