//! Byte layouts: the postcard value codec, the composite big-endian key codecs of the indexes,
//! and [`RecordDb`], a typed database whose reads turn undecodable bytes into typed errors
//! carrying the database name and key.
//!
//! postcard is not self-describing, so every stored value is a versioned enum (`XRecord::V1`);
//! postcard writes the variant index first as a varint, which is how [`RecordDb`] tells a record
//! from a newer build (`UnknownVersion`) from a damaged one (`Corrupt`).

use std::borrow::Cow;
use std::fmt::Display;
use std::marker::PhantomData;

use heed::types::Bytes;
use heed::{BoxedError, BytesDecode, BytesEncode, Database, RoTxn, RwTxn};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::QueueError;

/// A stored value: a serde enum whose variants are the successive versions of the record.
pub trait Versioned: Serialize + DeserializeOwned {
    /// How many versions this build can read (variants `V1..=V{VERSIONS}`).
    const VERSIONS: u64;
}

/// heed codec storing `T` with postcard.
pub struct Postcard<T>(PhantomData<T>);

impl<'a, T: Serialize + 'a> BytesEncode<'a> for Postcard<T> {
    type EItem = T;

    fn bytes_encode(item: &'a T) -> Result<Cow<'a, [u8]>, BoxedError> {
        Ok(Cow::Owned(postcard::to_stdvec(item)?))
    }
}

impl<'a, T: DeserializeOwned + 'a> BytesDecode<'a> for Postcard<T> {
    type DItem = T;

    fn bytes_decode(bytes: &'a [u8]) -> Result<T, BoxedError> {
        Ok(postcard::from_bytes(bytes)?)
    }
}

/// Index key `(tag, id)`: one byte of state tag, then the id big-endian, so a range over one tag
/// lists its ids oldest first.
pub enum TagId {}

impl<'a> BytesEncode<'a> for TagId {
    type EItem = (u8, u64);

    fn bytes_encode(&(tag, id): &'a (u8, u64)) -> Result<Cow<'a, [u8]>, BoxedError> {
        let mut k = Vec::with_capacity(9);
        k.push(tag);
        k.extend_from_slice(&id.to_be_bytes());
        Ok(Cow::Owned(k))
    }
}

impl<'a> BytesDecode<'a> for TagId {
    type DItem = (u8, u64);

    fn bytes_decode(bytes: &'a [u8]) -> Result<(u8, u64), BoxedError> {
        match bytes {
            [tag, rest @ ..] if rest.len() == 8 => {
                let mut id = [0u8; 8];
                id.copy_from_slice(rest);
                Ok((*tag, u64::from_be_bytes(id)))
            }
            _ => Err(format!("tag-id key of {} bytes", bytes.len()).into()),
        }
    }
}

/// Index key `(a, b)`: two big-endian u64s, ordered by `a` then `b`.
pub enum Pair {}

impl<'a> BytesEncode<'a> for Pair {
    type EItem = (u64, u64);

    fn bytes_encode(&(a, b): &'a (u64, u64)) -> Result<Cow<'a, [u8]>, BoxedError> {
        let mut k = Vec::with_capacity(16);
        k.extend_from_slice(&a.to_be_bytes());
        k.extend_from_slice(&b.to_be_bytes());
        Ok(Cow::Owned(k))
    }
}

impl<'a> BytesDecode<'a> for Pair {
    type DItem = (u64, u64);

    fn bytes_decode(bytes: &'a [u8]) -> Result<(u64, u64), BoxedError> {
        if bytes.len() != 16 {
            return Err(format!("pair key of {} bytes", bytes.len()).into());
        }
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        a.copy_from_slice(&bytes[..8]);
        b.copy_from_slice(&bytes[8..]);
        Ok((u64::from_be_bytes(a), u64::from_be_bytes(b)))
    }
}

/// Reads postcard's leading varint (the enum variant index); `None` if malformed.
fn leading_varint(bytes: &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Decodes a stored record, naming the database and key on failure.
///
/// # Errors
/// [`QueueError::UnknownVersion`] when the version tag is beyond what this build knows,
/// [`QueueError::Corrupt`] for any other undecodable bytes.
pub fn decode<R: Versioned>(
    db: &'static str,
    key: &dyn Display,
    bytes: &[u8],
) -> Result<R, QueueError> {
    postcard::from_bytes(bytes).map_err(|_| match leading_varint(bytes) {
        Some(version) if version >= R::VERSIONS => QueueError::UnknownVersion {
            db,
            key: key.to_string(),
            version,
        },
        _ => QueueError::Corrupt {
            db,
            key: key.to_string(),
        },
    })
}

/// A typed record database: key codec `K`, versioned value `R`, plus its name for errors.
pub struct RecordDb<K: 'static, R: 'static> {
    /// The typed database (writes encode through [`Postcard`]).
    pub db: Database<'static, K, Postcard<R>>,
    /// Its name in `db_name`.
    pub name: &'static str,
}

impl<K, R> Clone for RecordDb<K, R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, R> Copy for RecordDb<K, R> {}

impl<K, R> RecordDb<K, R>
where
    K: for<'a> BytesEncode<'a> + for<'a> BytesDecode<'a> + 'static,
    for<'a> <K as BytesEncode<'a>>::EItem: Display,
    R: Versioned + 'static,
{
    /// The same database seen as raw bytes, for decoding with context.
    pub fn raw(&self) -> Database<'static, K, Bytes> {
        self.db.remap_data_type::<Bytes>()
    }

    /// The same database with both sides as raw bytes.
    fn bytes_db(&self) -> Database<'static, Bytes, Bytes> {
        self.db.remap_types::<Bytes, Bytes>()
    }

    fn key_bytes<'a>(
        &self,
        key: &'a <K as BytesEncode<'a>>::EItem,
    ) -> Result<Cow<'a, [u8]>, QueueError> {
        K::bytes_encode(key).map_err(|e| QueueError::Encode {
            db: self.name,
            reason: e.to_string(),
        })
    }

    /// Reads and decodes one record.
    ///
    /// # Errors
    /// LMDB errors, [`QueueError::Corrupt`], [`QueueError::UnknownVersion`].
    pub fn get<'a>(
        &self,
        txn: &RoTxn,
        key: &'a <K as BytesEncode<'a>>::EItem,
    ) -> Result<Option<R>, QueueError> {
        let key_bytes = self.key_bytes(key)?;
        match self.bytes_db().get(txn, &key_bytes)? {
            None => Ok(None),
            Some(bytes) => decode(self.name, &key, bytes).map(Some),
        }
    }

    /// Encodes and writes one record.
    ///
    /// # Errors
    /// [`QueueError::Encode`] if serde refuses the value; LMDB errors (map full included).
    pub fn put<'a>(
        &self,
        txn: &mut RwTxn,
        key: &'a <K as BytesEncode<'a>>::EItem,
        record: &R,
    ) -> Result<(), QueueError> {
        let key_bytes = self.key_bytes(key)?;
        let bytes = postcard::to_stdvec(record).map_err(|e| QueueError::Encode {
            db: self.name,
            reason: e.to_string(),
        })?;
        self.bytes_db().put(txn, &key_bytes, &bytes)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_varint_reads_postcard_variant_tags() {
        assert_eq!(leading_varint(&[0]), Some(0));
        assert_eq!(leading_varint(&[5, 1, 2]), Some(5));
        assert_eq!(leading_varint(&[0x80, 0x01]), Some(128));
        assert_eq!(leading_varint(&[0x80]), None);
        assert_eq!(leading_varint(&[]), None);
    }

    #[test]
    fn composite_keys_sort_numerically() {
        let a = Pair::bytes_encode(&(1, 300)).unwrap().into_owned();
        let b = Pair::bytes_encode(&(2, 1)).unwrap().into_owned();
        assert!(a < b);
        assert_eq!(Pair::bytes_decode(&b).unwrap(), (2, 1));
        let t = TagId::bytes_encode(&(3, 258)).unwrap().into_owned();
        assert_eq!(TagId::bytes_decode(&t).unwrap(), (3, 258));
        assert!(TagId::bytes_decode(&t[..5]).is_err());
    }
}
