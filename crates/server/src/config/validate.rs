//! Semantic validation after parsing: the [`Validate`] hook that every config
//! section joins, and the key paths its problems are reported under.

use std::fmt;

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// `listeners` in `listeners[0].address`.
    Key(String),
    /// `0` in `listeners[0].address`.
    Index(usize),
}

/// Where a value sits in the config, e.g. `control.listen` or
/// `routes[2].upstream`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Segment>);

impl KeyPath {
    /// Parses the dotted form serde_path_to_error prints (`a.b[0].c`); keys
    /// that it could not name (`?`) are dropped.
    pub fn parse_dotted(s: &str) -> KeyPath {
        let mut out = Vec::new();
        for part in s.split('.') {
            let mut rest = part;
            if let Some(open) = rest.find('[') {
                let key = &rest[..open];
                if !key.is_empty() && key != "?" {
                    out.push(Segment::Key(key.to_owned()));
                }
                rest = &rest[open..];
                while let Some(close) = rest.find(']') {
                    if let Ok(i) = rest[1..close].parse() {
                        out.push(Segment::Index(i));
                    }
                    rest = &rest[close + 1..];
                }
            } else if !rest.is_empty() && rest != "?" {
                out.push(Segment::Key(rest.to_owned()));
            }
        }
        KeyPath(out)
    }

    /// The path with `key` appended.
    pub fn join(&self, key: &str) -> KeyPath {
        let mut next = self.clone();
        next.0.push(Segment::Key(key.to_owned()));
        next
    }

    /// True for the root (no segments).
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A semantic problem with the value at `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key the problem is about.
    pub path: KeyPath,
    /// What is wrong, and ideally how to fix it.
    pub message: String,
}

/// Implemented by every config section; reports problems that types alone
/// cannot express (cross-field rules, references between sections).
///
/// ```
/// use trellis::config::{Validate, Validator};
///
/// struct Route { upstream: String }
/// struct Gateway { routes: Vec<Route>, upstreams: Vec<String> }
///
/// impl Validate for Gateway {
///     fn validate(&self, v: &mut Validator) {
///         for (i, r) in self.routes.iter().enumerate() {
///             if !self.upstreams.contains(&r.upstream) {
///                 v.invalid_at(&format!("routes[{i}].upstream"), format!("unknown upstream {:?}", r.upstream));
///             }
///         }
///     }
/// }
///
/// let mut v = Validator::new();
/// let gw = Gateway { routes: vec![Route { upstream: "x".into() }], upstreams: vec![] };
/// v.section("gateway", &gw);
/// let problems = v.into_problems();
/// assert_eq!(problems[0].path.to_string(), "gateway.routes[0].upstream");
/// ```
pub trait Validate {
    /// Records each problem with `v.invalid(key, message)`; nested sections
    /// are checked with `v.section` / `v.each` so paths stay correct.
    fn validate(&self, v: &mut Validator);
}

/// Collects [`Problem`]s while walking the config, tracking the current path.
#[derive(Debug, Default)]
pub struct Validator {
    path: KeyPath,
    problems: Vec<Problem>,
}

impl Validator {
    /// An empty validator at the root.
    pub fn new() -> Self {
        Validator::default()
    }

    /// Validates a nested table found under `key`.
    pub fn section<T: Validate + ?Sized>(&mut self, key: &str, section: &T) {
        self.path.0.push(Segment::Key(key.to_owned()));
        section.validate(self);
        self.path.0.pop();
    }

    /// Validates each element of the array found under `key`.
    pub fn each<T: Validate>(&mut self, key: &str, items: &[T]) {
        self.path.0.push(Segment::Key(key.to_owned()));
        for (i, item) in items.iter().enumerate() {
            self.path.0.push(Segment::Index(i));
            item.validate(self);
            self.path.0.pop();
        }
        self.path.0.pop();
    }

    /// Records a problem with `key` of the current table.
    pub fn invalid(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            path: self.path.join(key),
            message: message.into(),
        });
    }

    /// Records a problem at a dotted path relative to the current table,
    /// e.g. `routes[2].upstream`: the bridge for sections whose own
    /// validation reports string paths.
    pub fn invalid_at(&mut self, relative: &str, message: impl Into<String>) {
        let mut path = self.path.clone();
        path.0.extend(KeyPath::parse_dotted(relative).0);
        self.problems.push(Problem {
            path,
            message: message.into(),
        });
    }

    /// Records a problem with the current table or element itself.
    pub fn invalid_here(&mut self, message: impl Into<String>) {
        self.problems.push(Problem {
            path: self.path.clone(),
            message: message.into(),
        });
    }

    /// The path of the table being validated.
    pub fn path(&self) -> &KeyPath {
        &self.path
    }

    /// The problems found, in the order they were recorded.
    pub fn into_problems(self) -> Vec<Problem> {
        self.problems
    }
}
