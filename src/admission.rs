//! Admission control before the WebSocket upgrade: the global session cap and the per-IP
//! cap. A granted [`Permit`] travels into the session actor and gives its place back on
//! `Drop`, so a session that ends by any path frees its slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    #[error("the server is at its session limit")]
    ServerFull,
    #[error("too many sessions from this address")]
    PerIpLimit,
}

/// Counts of admitted sessions, in total and per client address.
pub struct Admission {
    max_total: usize,
    max_per_ip: usize,
    // A std mutex: the critical section is a map update, never held across an await.
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl Admission {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Admission {
            max_total,
            max_per_ip,
            counts: Mutex::new(Counts::default()),
        })
    }

    pub fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, AdmissionError> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.total >= self.max_total {
            return Err(AdmissionError::ServerFull);
        }
        let from_ip = counts.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.max_per_ip {
            return Err(AdmissionError::PerIpLimit);
        }
        counts.total += 1;
        counts.per_ip.insert(ip, from_ip + 1);
        Ok(Permit {
            admission: Arc::clone(self),
            ip,
        })
    }

    /// Sessions admitted and not yet ended.
    pub fn admitted(&self) -> usize {
        self.counts.lock().map(|c| c.total).unwrap_or(0)
    }
}

/// One admitted session's place; released on drop.
pub struct Permit {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Permit {
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self
            .admission
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_and_permits_give_back() {
        let admission = Admission::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = admission.try_admit(a).unwrap();
        let _p2 = admission.try_admit(a).unwrap();
        assert_eq!(
            admission.try_admit(a).err(),
            Some(AdmissionError::PerIpLimit)
        );
        let _p3 = admission.try_admit(b).unwrap();
        assert_eq!(
            admission.try_admit(b).err(),
            Some(AdmissionError::ServerFull)
        );
        drop(p1);
        assert!(admission.try_admit(a).is_ok());
        assert_eq!(admission.admitted(), 2);
    }
}
