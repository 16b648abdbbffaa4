//! A sorted map of a few strings, for the labels and annotations a projection
//! keeps: a workload holds a handful of each, and a `BTreeMap` spends a 544-byte
//! node on even one entry (10,000 workloads, 4 maps each: 21 MiB). Keys repeat
//! across workloads (`app.kubernetes.io/name`, `tracing.caas.io/policy`), so they
//! are interned.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use super::intern;

/// Entries sorted by key, each key once; the API is the part of `BTreeMap`'s the
/// operator uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SmallMap(Vec<(Arc<str>, String)>);

impl SmallMap {
    pub fn new() -> Self {
        SmallMap(Vec::new())
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(key))
    }

    pub fn get<Q: Borrow<str> + ?Sized>(&self, key: &Q) -> Option<&String> {
        self.find(key.borrow()).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key<Q: Borrow<str> + ?Sized>(&self, key: &Q) -> bool {
        self.find(key.borrow()).is_ok()
    }

    /// Sets `key`; returns the value it replaced.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        self.insert_str(&key, value)
    }

    fn insert_str(&mut self, key: &str, value: String) -> Option<String> {
        match self.find(key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (intern(key), value));
                None
            }
        }
    }

    pub fn remove<Q: Borrow<str> + ?Sized>(&mut self, key: &Q) -> Option<String> {
        self.find(key.borrow()).ok().map(|i| self.0.remove(i).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &String)> {
        self.0.iter().map(|(k, v)| (&**k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| &**k)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

impl From<std::collections::BTreeMap<String, String>> for SmallMap {
    fn from(map: std::collections::BTreeMap<String, String>) -> Self {
        map.into_iter().collect()
    }
}

impl<K: AsRef<str>> FromIterator<(K, String)> for SmallMap {
    fn from_iter<I: IntoIterator<Item = (K, String)>>(iter: I) -> Self {
        let mut map = SmallMap::new();
        map.extend(iter);
        map.0.shrink_to_fit();
        map
    }
}

impl<K: AsRef<str>> Extend<(K, String)> for SmallMap {
    fn extend<I: IntoIterator<Item = (K, String)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert_str(k.as_ref(), v);
        }
    }
}

impl<'a> IntoIterator for &'a SmallMap {
    type Item = (&'a str, &'a String);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Arc<str>, String)>,
        fn(&'a (Arc<str>, String)) -> (&'a str, &'a String),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (&**k, v))
    }
}

/// A JSON object of strings (`null` is empty), deserialized without a `BTreeMap`
/// in between.
impl<'de> Deserialize<'de> for SmallMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SmallMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(SmallMap::new())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut map = SmallMap::new();
                while let Some((k, v)) = access.next_entry::<String, String>()? {
                    map.insert(k, v);
                }
                map.0.shrink_to_fit();
                Ok(map)
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::SmallMap;

    #[test]
    fn sorted_unique_keys_like_a_btree_map() {
        let mut m: SmallMap = [("b", "2"), ("a", "1"), ("b", "3")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(m.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(m.get("b").map(String::as_str), Some("3"));
        assert_eq!(m.insert("c".into(), "4".into()), None);
        assert_eq!(m.insert("a".into(), "5".into()).as_deref(), Some("1"));
        assert_eq!(m.remove("b").as_deref(), Some("3"));
        assert!(!m.contains_key("b") && m.contains_key("c"));
        assert_eq!(m.len(), 2);
    }
}
