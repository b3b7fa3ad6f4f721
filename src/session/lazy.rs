//! A part of the session boxed only while it holds something: an idle session keeps a null
//! pointer instead of the part, and the next request's first change allocates it again. For
//! the parts that only matter during a request (the work in progress, the server hold), which
//! are half of a session's size: ten thousand idle clients do not each keep them.

/// A part that can tell it holds nothing worth keeping.
pub(super) trait Clear: Default + 'static {
    /// The part as a new session has it (what reading an unallocated part sees).
    fn empty() -> &'static Self;
    /// Nothing in progress, nothing to remember.
    fn is_clear(&self) -> bool;
}

pub(super) struct Lazy<T>(Option<Box<T>>);

impl<T> Default for Lazy<T> {
    fn default() -> Self {
        Lazy(None)
    }
}

impl<T: Clear> std::ops::Deref for Lazy<T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self.0.as_deref() {
            Some(p) => p,
            None => T::empty(),
        }
    }
}

impl<T: Clear> std::ops::DerefMut for Lazy<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Box::default)
    }
}

impl<T: Clear> Lazy<T> {
    /// Frees the part when nothing in it matters any more (the session goes idle).
    pub fn release_if_clear(&mut self) {
        if self.0.as_ref().is_some_and(|p| p.is_clear()) {
            self.0 = None;
        }
    }

    /// The part, if allocated: for changes that leave an unallocated part as it is (clearing
    /// what is already empty), without allocating it.
    pub fn get_mut(&mut self) -> Option<&mut T> {
        self.0.as_deref_mut()
    }

    /// Allocated now (for the tests).
    #[cfg(test)]
    pub fn is_allocated(&self) -> bool {
        self.0.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Part {
        n: u32,
    }

    impl Clear for Part {
        fn empty() -> &'static Part {
            static EMPTY: Part = Part { n: 0 };
            &EMPTY
        }
        fn is_clear(&self) -> bool {
            self.n == 0
        }
    }

    #[test]
    fn allocated_by_a_change_freed_only_when_clear() {
        let mut p: Lazy<Part> = Lazy::default();
        assert_eq!(p.n, 0);
        assert!(!p.is_allocated(), "reading allocates nothing");
        p.n = 3;
        assert!(p.is_allocated());
        p.release_if_clear();
        assert!(p.is_allocated(), "a part holding something is kept");
        assert_eq!(p.n, 3);
        p.n = 0;
        p.release_if_clear();
        assert!(!p.is_allocated());
        assert_eq!(p.n, 0);
    }
}
