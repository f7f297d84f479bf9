//! The task state machine (spec §3.2), as a pure function.
//!
//! ```text
//!   Idle ──MediaStarted──▶ InProgress
//!    │                         │
//!    └──Stop(code)──▶ Exited(code) ◀──Stop(code)──┘
//!                        │
//!                    Finished ──▶ (removed)
//! ```
//!
//! A second Stop of an exiting task keeps the first LeaveCode (the first
//! reason is the true one and its 302 is already queued). Events that make
//! no sense in a state (Finished before Exited, media after Exited) change
//! nothing.

use crate::domain::task::{LeaveCode, TaskState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The first media of any subscribed publisher arrived.
    MediaStarted,
    /// The task must stop (Delete, idle, displaced, …).
    Stop(LeaveCode),
    /// An exiting task finished its files and uploads.
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changes (and nothing is emitted).
    Stay,
    /// Move to this state (a Stop also emits 302 with its LeaveCode).
    To(TaskState),
    /// The task is over: remove it.
    Remove,
}

pub fn next(state: TaskState, event: Event) -> Transition {
    match (state, event) {
        (TaskState::Idle, Event::MediaStarted) => Transition::To(TaskState::InProgress),
        (TaskState::Idle | TaskState::InProgress, Event::Stop(code)) => {
            Transition::To(TaskState::Exited { leave_code: code })
        }
        (TaskState::Exited { .. }, Event::Finished) => Transition::Remove,
        (TaskState::InProgress, Event::MediaStarted)
        | (TaskState::Exited { .. }, Event::MediaStarted | Event::Stop(_))
        | (TaskState::Idle | TaskState::InProgress, Event::Finished) => Transition::Stay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_happy_path() {
        let s = TaskState::Idle;
        let Transition::To(s) = next(s, Event::MediaStarted) else {
            panic!()
        };
        assert_eq!(s, TaskState::InProgress);
        let Transition::To(s) = next(s, Event::Stop(LeaveCode::ApiStop)) else {
            panic!()
        };
        assert_eq!(
            s,
            TaskState::Exited {
                leave_code: LeaveCode::ApiStop
            }
        );
        assert_eq!(next(s, Event::Finished), Transition::Remove);
    }

    #[test]
    fn an_idle_task_can_stop_directly() {
        assert_eq!(
            next(TaskState::Idle, Event::Stop(LeaveCode::Idle)),
            Transition::To(TaskState::Exited {
                leave_code: LeaveCode::Idle
            })
        );
    }

    #[test]
    fn the_first_stop_reason_wins_and_nonsense_is_ignored() {
        let exited = TaskState::Exited {
            leave_code: LeaveCode::Idle,
        };
        assert_eq!(
            next(exited, Event::Stop(LeaveCode::ApiStop)),
            Transition::Stay
        );
        assert_eq!(next(exited, Event::MediaStarted), Transition::Stay);
        assert_eq!(next(TaskState::Idle, Event::Finished), Transition::Stay);
        assert_eq!(
            next(TaskState::InProgress, Event::Finished),
            Transition::Stay
        );
        assert_eq!(
            next(TaskState::InProgress, Event::MediaStarted),
            Transition::Stay
        );
    }
}
