// @generated automatically by Diesel CLI.

diesel::table! {
    audit_log (id) {
        id -> Uuid,
        actor_id -> Nullable<Uuid>,
        action -> Text,
        target_type -> Text,
        target_id -> Nullable<Text>,
        metadata -> Jsonb,
        created_at -> Timestamptz,
        actor_email -> Nullable<Text>,
    }
}

diesel::table! {
    email_outbox (id) {
        id -> Uuid,
        user_id -> Nullable<Uuid>,
        recipient -> Text,
        template -> Text,
        subject -> Text,
        params -> Jsonb,
        secret -> Nullable<Bytea>,
        status -> Text,
        attempts -> Int4,
        last_error -> Nullable<Text>,
        unique_key -> Nullable<Text>,
        created_at -> Timestamptz,
        last_attempt_at -> Nullable<Timestamptz>,
        sent_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    email_tokens (id) {
        id -> Uuid,
        user_id -> Uuid,
        purpose -> Text,
        token_hash -> Bytea,
        email -> Text,
        expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    event_outbox (id) {
        id -> Int8,
        topic -> Text,
        payload -> Jsonb,
        xact_id -> Int8,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    idempotency_keys (user_id, key) {
        user_id -> Uuid,
        key -> Text,
        operation -> Text,
        request_hash -> Bytea,
        result -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    invoice_counters (year) {
        year -> Int4,
        last_number -> Int4,
    }
}

diesel::table! {
    invoice_lines (id) {
        id -> Uuid,
        invoice_id -> Uuid,
        position -> Int4,
        description -> Text,
        quantity -> Int4,
        unit_price -> Int8,
        amount -> Int8,
    }
}

diesel::table! {
    invoices (id) {
        id -> Uuid,
        number -> Text,
        year -> Int4,
        sequence -> Int4,
        user_id -> Uuid,
        subscription_id -> Nullable<Uuid>,
        status -> Text,
        currency -> Text,
        period_start -> Nullable<Timestamptz>,
        period_end -> Nullable<Timestamptz>,
        subtotal -> Int8,
        tax -> Int8,
        total -> Int8,
        tax_name -> Nullable<Text>,
        tax_rate_bp -> Int4,
        purpose -> Text,
        issued_at -> Timestamptz,
        paid_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    jobs (id) {
        id -> Uuid,
        kind -> Text,
        payload -> Jsonb,
        status -> Text,
        run_at -> Timestamptz,
        attempts -> Int4,
        max_attempts -> Int4,
        last_error -> Nullable<Text>,
        unique_key -> Nullable<Text>,
        locked_by -> Nullable<Text>,
        locked_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        lease_expires_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    notification_preferences (user_id) {
        user_id -> Uuid,
        instance_alerts -> Bool,
        renewal_reminders -> Bool,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    processed_webhook_events (provider, event_id) {
        provider -> Text,
        event_id -> Text,
        event_type -> Text,
        received_at -> Timestamptz,
    }
}

diesel::table! {
    refresh_tokens (id) {
        id -> Uuid,
        session_id -> Uuid,
        token_hash -> Bytea,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        rotated_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    schedules (name) {
        name -> Text,
        cron -> Text,
        next_run_at -> Timestamptz,
        last_run_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    service_categories (id) {
        id -> Uuid,
        slug -> Text,
        name -> Text,
        description -> Text,
        icon -> Nullable<Text>,
        sort_order -> Int4,
        is_active -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    service_instances (id) {
        id -> Uuid,
        subscription_id -> Uuid,
        user_id -> Uuid,
        name -> Text,
        subdomain -> Text,
        node_id -> Nullable<Uuid>,
        namespace -> Nullable<Text>,
        desired_state -> Text,
        status -> Text,
        status_message -> Nullable<Text>,
        public_url -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        restarted_at -> Nullable<Timestamptz>,
        placed_at -> Nullable<Timestamptz>,
        generation -> Int8,
        credentials -> Nullable<Bytea>,
    }
}

diesel::table! {
    service_plans (id) {
        id -> Uuid,
        service_id -> Uuid,
        name -> Text,
        plan_type -> Text,
        monthly_price -> Int8,
        currency -> Text,
        cpu_milli -> Int4,
        memory_mb -> Int4,
        storage_gb -> Int4,
        total_quota -> Nullable<Int4>,
        used_quota -> Int4,
        max_instances_per_user -> Nullable<Int4>,
        sort_order -> Int4,
        is_active -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    service_subscriptions (id) {
        id -> Uuid,
        user_id -> Uuid,
        plan_id -> Uuid,
        name -> Text,
        status -> Text,
        price -> Int8,
        currency -> Text,
        current_period_start -> Timestamptz,
        current_period_end -> Timestamptz,
        auto_renew -> Bool,
        cancel_at_period_end -> Bool,
        failed_charges -> Int4,
        grace_until -> Nullable<Timestamptz>,
        next_retry_at -> Nullable<Timestamptz>,
        suspended_at -> Nullable<Timestamptz>,
        suspended_by_admin -> Bool,
        cancelled_at -> Nullable<Timestamptz>,
        expired_at -> Nullable<Timestamptz>,
        holds_quota -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    services (id) {
        id -> Uuid,
        category_id -> Nullable<Uuid>,
        slug -> Text,
        name -> Text,
        description -> Text,
        icon -> Nullable<Text>,
        docker_image -> Text,
        container_port -> Int4,
        env_template -> Jsonb,
        volume_mount_path -> Nullable<Text>,
        tags -> Array<Nullable<Text>>,
        is_active -> Bool,
        is_public -> Bool,
        is_featured -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    sessions (id) {
        id -> Uuid,
        user_id -> Uuid,
        created_at -> Timestamptz,
        last_used_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
        revoked_reason -> Nullable<Text>,
        user_agent -> Nullable<Text>,
        ip -> Nullable<Text>,
    }
}

diesel::table! {
    top_ups (id) {
        id -> Uuid,
        user_id -> Uuid,
        amount -> Int8,
        currency -> Text,
        status -> Text,
        payment_intent_id -> Nullable<Text>,
        client_secret -> Nullable<Text>,
        failure_message -> Nullable<Text>,
        settled_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    users (id) {
        id -> Uuid,
        name -> Text,
        email -> Text,
        password_hash -> Text,
        role -> Text,
        is_active -> Bool,
        email_verified_at -> Nullable<Timestamptz>,
        last_login_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    wallet_transactions (id) {
        id -> Uuid,
        user_id -> Uuid,
        #[sql_name = "type"]
        type_ -> Text,
        amount -> Int8,
        currency -> Text,
        balance_before -> Int8,
        balance_after -> Int8,
        reference -> Nullable<Text>,
        description -> Text,
        subscription_id -> Nullable<Uuid>,
        invoice_id -> Nullable<Uuid>,
        refund_of -> Nullable<Uuid>,
        unique_key -> Nullable<Text>,
        created_by -> Nullable<Uuid>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    wallets (user_id) {
        user_id -> Uuid,
        currency -> Text,
        balance -> Int8,
        stripe_customer_id -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    worker_nodes (id) {
        id -> Uuid,
        name -> Text,
        hostname -> Text,
        ip_address -> Text,
        cpu_cores -> Int4,
        cpu_model -> Nullable<Text>,
        memory_mb -> Int8,
        storage_mb -> Int8,
        architecture -> Text,
        operating_system -> Text,
        region -> Nullable<Text>,
        status -> Text,
        is_ready -> Bool,
        is_schedulable -> Bool,
        max_pods -> Int4,
        current_pods -> Int4,
        allocated_cpu_milli -> Int4,
        allocated_memory_mb -> Int8,
        allocated_storage_mb -> Int8,
        labels -> Jsonb,
        taints -> Jsonb,
        kubelet_version -> Nullable<Text>,
        container_runtime -> Nullable<Text>,
        kernel_version -> Nullable<Text>,
        os_image -> Nullable<Text>,
        last_heartbeat -> Nullable<Timestamptz>,
        last_health_check -> Nullable<Timestamptz>,
        token_hash -> Bytea,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::joinable!(email_outbox -> users (user_id));
diesel::joinable!(email_tokens -> users (user_id));
diesel::joinable!(idempotency_keys -> users (user_id));
diesel::joinable!(invoice_lines -> invoices (invoice_id));
diesel::joinable!(invoices -> service_subscriptions (subscription_id));
diesel::joinable!(invoices -> users (user_id));
diesel::joinable!(notification_preferences -> users (user_id));
diesel::joinable!(refresh_tokens -> sessions (session_id));
diesel::joinable!(service_instances -> service_subscriptions (subscription_id));
diesel::joinable!(service_instances -> users (user_id));
diesel::joinable!(service_instances -> worker_nodes (node_id));
diesel::joinable!(service_plans -> services (service_id));
diesel::joinable!(service_subscriptions -> service_plans (plan_id));
diesel::joinable!(service_subscriptions -> users (user_id));
diesel::joinable!(services -> service_categories (category_id));
diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(top_ups -> wallets (user_id));
diesel::joinable!(wallet_transactions -> wallets (user_id));
diesel::joinable!(wallets -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    audit_log,
    email_outbox,
    email_tokens,
    event_outbox,
    idempotency_keys,
    invoice_counters,
    invoice_lines,
    invoices,
    jobs,
    notification_preferences,
    processed_webhook_events,
    refresh_tokens,
    schedules,
    service_categories,
    service_instances,
    service_plans,
    service_subscriptions,
    services,
    sessions,
    top_ups,
    users,
    wallet_transactions,
    wallets,
    worker_nodes,
);
