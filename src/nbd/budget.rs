//! In-flight byte budgets: one per connection and one for the whole server bound the
//! memory request payloads and read buffers hold (see `transmission`, docs/nbd.md,
//! "Robustness").

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// The server-wide budget (all connections together; docs/nbd.md, "Robustness").
pub const GLOBAL_BUDGET: u64 = 256 << 20;
/// How often a waiting reader looks at its cancel condition.
const WAIT_POLL: Duration = Duration::from_millis(250);

/// Bytes in flight, waited on by readers in arrival order (first come, first served, so a
/// stream of other requests cannot starve one).
pub struct Budget {
    limit: u64,
    state: Mutex<BudgetState>,
    freed: Condvar,
}

struct BudgetState {
    used: u64,
    /// Tickets of the waiting readers, oldest first.
    queue: VecDeque<u64>,
    next_ticket: u64,
}

impl Budget {
    pub fn new(limit: u64) -> Budget {
        Budget {
            limit,
            state: Mutex::new(BudgetState {
                used: 0,
                queue: VecDeque::new(),
                next_ticket: 0,
            }),
            freed: Condvar::new(),
        }
    }
    /// Take `n` bytes, waiting while the budget is full (one request may always run alone,
    /// whatever its size). Returns false, taking nothing, once `cancel` says so.
    pub(super) fn acquire(&self, n: u64, cancel: &dyn Fn() -> bool) -> bool {
        let fits = |used: u64| used == 0 || used + n <= self.limit;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.queue.is_empty() && fits(st.used) {
            st.used += n;
            return true;
        }
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push_back(ticket);
        loop {
            if st.queue.front() == Some(&ticket) && fits(st.used) {
                st.queue.pop_front();
                st.used += n;
                // The next in line may fit too.
                self.freed.notify_all();
                return true;
            }
            if cancel() {
                st.queue.retain(|&t| t != ticket);
                self.freed.notify_all();
                return false;
            }
            st = self
                .freed
                .wait_timeout(st, WAIT_POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
    pub(super) fn release(&self, n: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.used -= n;
        self.freed.notify_all();
    }
    /// Someone is waiting for room.
    pub(super) fn contended(&self) -> bool {
        !self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .queue
            .is_empty()
    }
}
