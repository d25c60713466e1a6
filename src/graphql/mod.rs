//! Schema assembly, request context helpers and the actix handlers.

pub mod caller;
pub mod handlers;
pub mod limits;
pub mod loader_cache;
pub mod over_http;
pub mod socket;

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::dataloader::DataLoader;
use async_graphql::{Context, ID, MergedObject, MergedSubscription, Object, OutputType, Schema};
use uuid::Uuid;

use crate::auth::Identity;
use crate::catalog::graphql::{CatalogDataLoader, CatalogLoader};
use crate::config::Settings;
use crate::error::{AppError, AppResult};
use crate::pagination::{Cursor, Page, Total};
use crate::state::{AppState, ClientInfo};
use crate::users::graphql::UserLoader;

#[derive(MergedObject, Default)]
#[graphql(name = "Query")]
pub struct QueryRoot(
    crate::users::graphql::UsersQuery,
    crate::audit::graphql::AuditQuery,
    crate::catalog::graphql::CatalogQuery,
    crate::nodes::graphql::NodesQuery,
    crate::jobs::graphql::JobsQuery,
    crate::billing::graphql::BillingQuery,
    crate::subscriptions::graphql::SubscriptionsQuery,
    crate::instances::graphql::InstancesQuery,
    crate::email::graphql::EmailQuery,
);

#[derive(MergedObject, Default)]
#[graphql(name = "Mutation")]
pub struct MutationRoot(
    crate::auth::graphql::AuthMutation,
    crate::users::graphql::UsersMutation,
    crate::catalog::graphql::CatalogMutation,
    crate::nodes::graphql::NodesMutation,
    crate::billing::graphql::BillingMutation,
    crate::subscriptions::graphql::SubscriptionsMutation,
    crate::instances::graphql::InstancesMutation,
    crate::email::graphql::EmailMutation,
);

#[derive(MergedSubscription, Default)]
#[graphql(name = "Subscription")]
pub struct SubscriptionRoot(
    crate::users::graphql::UsersSubscription,
    crate::nodes::graphql::NodesSubscription,
    crate::billing::graphql::BillingSubscription,
    crate::subscriptions::graphql::SubscriptionsSubscription,
    crate::instances::graphql::InstancesSubscription,
);

pub type PodiumSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// Limits for the schema; the schema is built once and shared by every worker.
#[derive(Clone, Copy, Debug)]
pub struct SchemaLimits {
    pub max_depth: usize,
    pub max_complexity: usize,
    pub max_aliases: usize,
    pub introspection: bool,
}

impl From<&Settings> for SchemaLimits {
    fn from(s: &Settings) -> Self {
        SchemaLimits {
            max_depth: s.max_query_depth,
            max_complexity: s.max_query_complexity,
            max_aliases: s.max_aliases,
            introspection: s.introspection,
        }
    }
}

pub fn build_schema(limits: SchemaLimits) -> PodiumSchema {
    let builder = Schema::build(
        QueryRoot::default(),
        MutationRoot::default(),
        SubscriptionRoot::default(),
    )
    // Depth and cost are judged by this extension, not by `limit_depth` and
    // `limit_complexity`: it lets the standard introspection query through and gives
    // every refusal a code.
    .extension(limits::QueryLimits {
        max_depth: limits.max_depth,
        max_complexity: limits.max_complexity,
        max_aliases: limits.max_aliases,
        introspection: limits.introspection,
    });
    if limits.introspection {
        builder.finish()
    } else {
        builder.disable_introspection().finish()
    }
}

/// The SDL with sorted fields: what `schema.graphql` holds.
pub fn sdl() -> String {
    let schema = Schema::build(
        QueryRoot::default(),
        MutationRoot::default(),
        SubscriptionRoot::default(),
    )
    .finish();
    schema.sdl_with_options(
        async_graphql::SDLExportOptions::new()
            .sorted_fields()
            .sorted_arguments()
            .sorted_enum_items(),
    )
}

/// Per-request data every resolver can reach.
pub fn request_data(
    state: &AppState,
    identity: Identity,
    client: ClientInfo,
) -> async_graphql::Data {
    let mut data = async_graphql::Data::default();
    let epoch = loader_cache::Epoch::default();
    data.insert(epoch.clone());
    data.insert(state.clone());
    data.insert(DataLoader::new(
        UserLoader::new(state.clone(), identity.clone()),
        tokio::spawn,
    ));
    data.insert(CatalogDataLoader::with_cache(
        CatalogLoader::new(state.clone(), identity.clone()),
        tokio::spawn,
        loader_cache::EpochCache(epoch.clone()),
    ));
    data.insert(crate::billing::graphql::BillingDataLoader::with_cache(
        crate::billing::graphql::BillingLoader::new(state.clone(), identity.clone()),
        tokio::spawn,
        loader_cache::EpochCache(epoch.clone()),
    ));
    data.insert(
        crate::subscriptions::graphql::SubscriptionDataLoader::with_cache(
            crate::subscriptions::graphql::SubscriptionLoader::new(state.clone(), identity.clone()),
            tokio::spawn,
            loader_cache::EpochCache(epoch.clone()),
        ),
    );
    data.insert(crate::nodes::graphql::NodeNameLoader::with_cache(
        crate::nodes::graphql::NodeNames {
            state: state.clone(),
        },
        tokio::spawn,
        loader_cache::EpochCache(epoch.clone()),
    ));
    data.insert(identity);
    data.insert(client);
    data
}

/// Shorthands for the data `request_data` puts in every request.
pub trait ContextExt {
    fn state(&self) -> &AppState;
    fn identity(&self) -> &Identity;
    fn client(&self) -> &ClientInfo;
}

impl ContextExt for Context<'_> {
    fn state(&self) -> &AppState {
        self.data_unchecked::<AppState>()
    }
    fn identity(&self) -> &Identity {
        self.data_unchecked::<Identity>()
    }
    fn client(&self) -> &ClientInfo {
        self.data_unchecked::<ClientInfo>()
    }
}

/// Parses a GraphQL `ID` argument as a UUID, naming the argument when it is not one.
pub fn parse_id(field: &str, id: &ID) -> AppResult<Uuid> {
    id.parse::<Uuid>()
        .map_err(|_| AppError::field(field, "is not a valid ID"))
}

/// The connection fields beyond edges and pageInfo.
pub struct TotalCount(Total);

#[Object]
impl TotalCount {
    /// How many items the whole list holds, across all pages.
    async fn total_count(&self) -> async_graphql::Result<i64> {
        Ok(self.0.get().await?)
    }
}

pub type PodiumConnection<N> = Connection<String, N, TotalCount, EmptyFields>;

/// A Relay connection from a service page.
pub fn connection<T, N: OutputType>(
    page: Page<T>,
    cursor: impl Fn(&T) -> Cursor,
    node: impl Fn(T) -> N,
) -> PodiumConnection<N> {
    let mut conn =
        Connection::with_additional_fields(false, page.has_next_page, TotalCount(page.total));
    conn.edges.extend(
        page.items
            .into_iter()
            .map(|item| Edge::new(cursor(&item).encode(), node(item))),
    );
    conn
}

/// A GraphQL subscription to a domain's events on `topic`: each event is decoded and
/// handed to `deliver` with the subscriber's identity as it is now (`deliver` decides, in
/// the domain's service, what that identity may see: `None` skips the event). The stream
/// ends once the subscriber is deactivated, signed out or loses access (an error).
pub fn live<T, O, F, Fut>(
    ctx: &Context<'_>,
    topic: &'static str,
    deliver: F,
) -> AppResult<impl futures_util::Stream<Item = O> + use<T, O, F, Fut>>
where
    T: serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
    O: Send + 'static,
    F: Fn(AppState, Identity, T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = AppResult<Option<O>>> + Send,
{
    use tokio::sync::broadcast::error::RecvError;
    let actor = ctx.identity().actor()?.clone();
    let state = ctx.state().clone();
    // Each event's nested fields are loaded afresh, not from the previous event's cache.
    let epoch = ctx.data_unchecked::<loader_cache::Epoch>().clone();
    let events = state.events.subscribe();
    Ok(futures_util::stream::unfold(
        (events, state, actor, deliver),
        move |(mut events, state, actor, deliver)| {
            let epoch = epoch.clone();
            async move {
                loop {
                    let message = match events.recv().await {
                        Ok(message) => message,
                        // Events were lost to this subscriber: ending the stream tells the
                        // client to read afresh and subscribe again, rather than letting it
                        // believe it saw every change.
                        Err(RecvError::Lagged(missed)) => {
                            tracing::warn!(
                                missed,
                                topic,
                                "a slow subscriber missed events: its stream ends"
                            );
                            return None;
                        }
                        Err(RecvError::Closed) => return None,
                    };
                    let Some(event) = message.decode_shared::<T>(topic) else {
                        continue;
                    };
                    let now = match crate::auth::identity::current(
                        &state,
                        actor.user_id,
                        actor.session_id,
                    )
                    .await
                    {
                        Ok(Some(now)) => now,
                        _ => return None,
                    };
                    match deliver(state.clone(), Identity::User(now), event).await {
                        Ok(Some(out)) => {
                            epoch.bump();
                            return Some((out, (events, state, actor, deliver)));
                        }
                        Ok(None) => continue,
                        Err(_) => return None,
                    }
                }
            }
        },
    ))
}
