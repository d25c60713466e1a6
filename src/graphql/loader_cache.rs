//! The DataLoaders' per-request cache, emptied whenever a live subscription delivers an
//! event: a subscription's events are resolved with the data of the operation that
//! started it, so a plain per-request cache would show the first event's nested objects
//! (a subscription's instance, a plan's quota) for the socket's whole life.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_graphql::dataloader::{CacheFactory, CacheStorage};

/// Which generation of loaded data is current; `bump` makes every loader of the
/// request forget what it loaded.
#[derive(Clone, Default)]
pub struct Epoch(Arc<AtomicU64>);

impl Epoch {
    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn current(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A HashMap cache that empties itself when its request's epoch moves on.
pub struct EpochCache(pub Epoch);

impl CacheFactory for EpochCache {
    fn create<K, V>(&self) -> Box<dyn CacheStorage<Key = K, Value = V>>
    where
        K: Send + Sync + Clone + Eq + Hash + 'static,
        V: Send + Sync + Clone + 'static,
    {
        Box::new(Storage {
            seen: self.0.current(),
            epoch: self.0.clone(),
            map: HashMap::new(),
        })
    }
}

struct Storage<K, V> {
    epoch: Epoch,
    seen: u64,
    map: HashMap<K, V>,
}

impl<K, V> Storage<K, V> {
    fn fresh(&mut self) {
        let now = self.epoch.current();
        if now != self.seen {
            self.map.clear();
            self.seen = now;
        }
    }
}

impl<K, V> CacheStorage for Storage<K, V>
where
    K: Send + Sync + Clone + Eq + Hash + 'static,
    V: Send + Sync + Clone + 'static,
{
    type Key = K;
    type Value = V;

    fn get(&mut self, key: &K) -> Option<&V> {
        self.fresh();
        self.map.get(key)
    }

    fn insert(&mut self, key: Cow<'_, K>, val: Cow<'_, V>) {
        self.fresh();
        self.map.insert(key.into_owned(), val.into_owned());
    }

    fn remove(&mut self, key: &K) {
        self.map.remove(key);
    }

    fn clear(&mut self) {
        self.map.clear();
    }

    fn iter(&self) -> Box<dyn Iterator<Item = (&'_ K, &'_ V)> + '_> {
        Box::new(self.map.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bump_empties_the_cache() {
        let epoch = Epoch::default();
        let mut cache = EpochCache(epoch.clone()).create::<u32, &'static str>();
        cache.insert(Cow::Owned(1), Cow::Owned("one"));
        assert_eq!(cache.get(&1), Some(&"one"));
        epoch.bump();
        assert_eq!(cache.get(&1), None);
    }
}
