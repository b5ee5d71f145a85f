//! Table definitions shared by every backend; the migrations under `migrations/<backend>/` create
//! the same tables with each backend's own column types.

diesel::table! {
    accounts (user_id, currency) {
        user_id -> Text,
        currency -> Text,
        balance_minor -> BigInt,
        version -> BigInt,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    orders (order_no) {
        order_no -> Text,
        user_id -> Text,
        channel -> Text,
        amount_minor -> BigInt,
        currency -> Text,
        status -> Text,
        provider_trade_no -> Nullable<Text>,
        version -> BigInt,
        created_at -> Timestamp,
        paid_at -> Nullable<Timestamp>,
        closed_at -> Nullable<Timestamp>,
        refunded_minor -> BigInt,
        disputed_minor -> BigInt,
        next_query_at -> Nullable<Timestamp>,
        query_attempts -> BigInt,
    }
}

diesel::table! {
    ledger (id) {
        id -> BigInt,
        user_id -> Text,
        currency -> Text,
        order_no -> Nullable<Text>,
        kind -> Text,
        amount_minor -> BigInt,
        balance_after -> BigInt,
        created_at -> Timestamp,
        entry_key -> Text,
        debit_no -> Nullable<Text>,
        memo -> Nullable<Text>,
    }
}

diesel::table! {
    notifications (id) {
        id -> BigInt,
        channel -> Text,
        notification_id -> Text,
        order_no -> Nullable<Text>,
        provider_trade_no -> Nullable<Text>,
        kind -> Text,
        amount_minor -> Nullable<BigInt>,
        currency -> Nullable<Text>,
        verified -> Bool,
        verify_error -> Nullable<Text>,
        outcome -> Text,
        detail -> Nullable<Text>,
        raw_headers -> Text,
        raw_body -> Binary,
        delivery_count -> BigInt,
        first_seen_at -> Timestamp,
        last_seen_at -> Timestamp,
        anomaly -> Bool,
        source -> Text,
        resolution -> Nullable<Text>,
        resolved_by -> Nullable<Text>,
        resolved_at -> Nullable<Timestamp>,
        resolution_note -> Nullable<Text>,
    }
}

diesel::table! {
    console_sessions (id_hash) {
        id_hash -> Text,
        csrf_token -> Text,
        operator -> Text,
        created_at -> Timestamp,
        expires_at -> Timestamp,
    }
}

diesel::table! {
    provider_cursors (channel) {
        channel -> Text,
        read_up_to -> Text,
        updated_at -> Timestamp,
    }
}

diesel::allow_tables_to_appear_in_same_query!(accounts, orders, ledger, notifications);
