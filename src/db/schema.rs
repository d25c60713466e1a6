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

diesel::joinable!(refresh_tokens -> sessions (session_id));
diesel::joinable!(service_plans -> services (service_id));
diesel::joinable!(services -> service_categories (category_id));
diesel::joinable!(sessions -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    audit_log,
    jobs,
    refresh_tokens,
    schedules,
    service_categories,
    service_plans,
    services,
    sessions,
    users,
    worker_nodes,
);
