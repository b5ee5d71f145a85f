//! Hand-written SQL that diesel still prepares once per connection.
//!
//! `diesel::sql_query` marks its SQL as unsafe to cache, so PostgreSQL would parse and plan it on
//! every call (and SQLite prepare it). A [`Statement`] is the same text with its bind values in
//! place, built from static pieces, so each statement's text is the same on every call and
//! diesel's statement cache keeps it prepared. Placeholders are the backend's own (`$1` or `?`).
//! Where diesel would write `IN (...)` lists of any length, each prepared anew, a statement's lists
//! are padded to a few lengths instead.

use std::marker::PhantomData;

use chrono::NaiveDateTime;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Binary, Bool, Nullable, Text, Timestamp};
use diesel::{QueryResult, RunQueryDsl};

use crate::db::{DbConnection, MultiBackend};

/// One piece of a statement: SQL text, or a value bound in its place.
enum Piece<'a> {
    Sql(&'static str),
    Text(&'a str),
    NullableText(Option<&'a str>),
    BigInt(i64),
    NullableBigInt(Option<i64>),
    Binary(&'a [u8]),
    Bool(bool),
    Timestamp(NaiveDateTime),
}

/// A statement whose rows are of SQL type `ST`.
pub struct Statement<'a, ST> {
    pieces: Vec<Piece<'a>>,
    row: PhantomData<ST>,
}

impl<'a, ST> Statement<'a, ST> {
    pub fn new(sql: &'static str) -> Self {
        Statement {
            pieces: vec![Piece::Sql(sql)],
            row: PhantomData,
        }
    }

    pub fn sql(mut self, sql: &'static str) -> Self {
        self.pieces.push(Piece::Sql(sql));
        self
    }

    pub fn text(mut self, value: &'a str) -> Self {
        self.pieces.push(Piece::Text(value));
        self
    }

    pub fn nullable_text(mut self, value: Option<&'a str>) -> Self {
        self.pieces.push(Piece::NullableText(value));
        self
    }

    pub fn bigint(mut self, value: i64) -> Self {
        self.pieces.push(Piece::BigInt(value));
        self
    }

    /// The values of an `IN (...)` list, padded to the next power of two by repeating the last
    /// one (which changes nothing in an `IN` list), so that the statement has one of a few texts
    /// and each stays prepared; `NULL`, which matches nothing, for none. For `IN` only: padding
    /// and `NULL` would change what `NOT IN` means.
    pub fn text_list(self, values: &[&'a str]) -> Self {
        self.list(values, Piece::Text)
    }

    /// [`text_list`](Self::text_list) for integers.
    pub fn bigint_list(self, values: &[i64]) -> Self {
        self.list(values, Piece::BigInt)
    }

    fn list<T: Copy>(mut self, values: &[T], piece: impl Fn(T) -> Piece<'a>) -> Self {
        if values.is_empty() {
            return self.sql("NULL");
        }
        for (i, &value) in padded(values).enumerate() {
            if i > 0 {
                self.pieces.push(Piece::Sql(", "));
            }
            self.pieces.push(piece(value));
        }
        self
    }

    pub fn nullable_bigint(mut self, value: Option<i64>) -> Self {
        self.pieces.push(Piece::NullableBigInt(value));
        self
    }

    pub fn binary(mut self, value: &'a [u8]) -> Self {
        self.pieces.push(Piece::Binary(value));
        self
    }

    pub fn bool(mut self, value: bool) -> Self {
        self.pieces.push(Piece::Bool(value));
        self
    }

    pub fn timestamp(mut self, value: NaiveDateTime) -> Self {
        self.pieces.push(Piece::Timestamp(value));
        self
    }
}

impl<ST> QueryFragment<MultiBackend> for Statement<'_, ST> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, MultiBackend>) -> QueryResult<()> {
        for piece in &self.pieces {
            match piece {
                Piece::Sql(sql) => out.push_sql(sql),
                Piece::Text(v) => out.push_bind_param::<Text, _>(v)?,
                Piece::NullableText(v) => out.push_bind_param::<Nullable<Text>, _>(v)?,
                Piece::BigInt(v) => out.push_bind_param::<BigInt, _>(v)?,
                Piece::NullableBigInt(v) => out.push_bind_param::<Nullable<BigInt>, _>(v)?,
                Piece::Binary(v) => out.push_bind_param::<Binary, _>(v)?,
                Piece::Bool(v) => out.push_bind_param::<Bool, _>(v)?,
                Piece::Timestamp(v) => out.push_bind_param::<Timestamp, _>(v)?,
            }
        }
        Ok(())
    }
}

impl<ST> QueryId for Statement<'_, ST> {
    type QueryId = ();
    // No static id: the cache keys the statement by its text.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<ST: 'static> Query for Statement<'_, ST> {
    type SqlType = ST;
}

impl<ST> RunQueryDsl<DbConnection> for Statement<'_, ST> {}

/// `items`, then its last item again up to the next power of two: a list that gives a statement
/// one of a few texts, where repeating a value changes nothing.
pub(super) fn padded<T>(items: &[T]) -> impl Iterator<Item = &T> {
    let last = items.last();
    items
        .iter()
        .chain(std::iter::repeat_n(last, items.len().next_power_of_two() - items.len()).flatten())
}

#[cfg(test)]
mod tests {
    use super::padded;

    #[test]
    fn a_padded_list_repeats_its_last_item_to_a_power_of_two() {
        let padded = |items: &[u8]| padded(items).copied().collect::<Vec<_>>();
        assert_eq!(padded(&[]), Vec::<u8>::new());
        assert_eq!(padded(&[7]), [7]);
        assert_eq!(padded(&[1, 2, 3]), [1, 2, 3, 3]);
        assert_eq!(padded(&[1, 2, 3, 4, 5]), [1, 2, 3, 4, 5, 5, 5, 5]);
    }
}
