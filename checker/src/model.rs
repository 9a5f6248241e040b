//! Sequential specifications: what one key does when operations take effect one at a time.

use crate::history::Action;
use std::fmt;
use std::str::FromStr;

/// The sequential specification a history is checked against. An enum rather than a trait so the
/// CLI can name it (`--model register`) and the search can stay monomorphic; new models are new
/// variants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Model {
    /// One read/write/compare-and-set register per key, initially missing (`null`).
    #[default]
    Register,
}

/// A key's state in the register model: its value, or `None` while it is missing.
pub(crate) type State = Option<i64>;

impl Model {
    /// Every key's state before the history begins.
    pub(crate) fn init(self) -> State {
        None
    }

    /// The state after `action` takes effect in `state`, or `None` if it cannot take effect there
    /// with the result the history recorded (a read of another value, a cas expecting another).
    /// A cas of unknown outcome that finds another value had no effect, which the search
    /// expresses by leaving it out, so it too only steps when it would swap.
    pub(crate) fn step(self, state: State, action: &Action) -> Option<State> {
        match *action {
            Action::Read { value } => (state == value).then_some(state),
            Action::Write { value } => Some(Some(value)),
            Action::Cas { expected, new } => (state == expected).then_some(Some(new)),
        }
    }
}

impl FromStr for Model {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "register" => Ok(Model::Register),
            other => Err(format!("unknown model `{other}` (known: register)")),
        }
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Model::Register => f.write_str("register"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_steps() {
        let m = Model::Register;
        assert_eq!(m.init(), None);
        assert_eq!(m.step(None, &Action::Read { value: None }), Some(None));
        assert_eq!(
            m.step(Some(1), &Action::Read { value: Some(1) }),
            Some(Some(1))
        );
        assert_eq!(m.step(Some(1), &Action::Read { value: Some(2) }), None);
        assert_eq!(m.step(Some(1), &Action::Write { value: 2 }), Some(Some(2)));
        let cas = Action::Cas {
            expected: Some(1),
            new: 3,
        };
        assert_eq!(m.step(Some(1), &cas), Some(Some(3)));
        assert_eq!(m.step(None, &cas), None);
        let create = Action::Cas {
            expected: None,
            new: 4,
        };
        assert_eq!(m.step(None, &create), Some(Some(4)));
        assert_eq!(m.step(Some(4), &create), None);
    }

    #[test]
    fn names() {
        assert_eq!("register".parse::<Model>(), Ok(Model::Register));
        assert_eq!(Model::Register.to_string(), "register");
        assert_eq!(
            "queue".parse::<Model>(),
            Err("unknown model `queue` (known: register)".to_string())
        );
    }
}
