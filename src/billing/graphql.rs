//! Wallets, movements, invoices and administrators' billing tools in the API.

use std::collections::HashMap;

use async_graphql::dataloader::{DataLoader, Loader};
use async_graphql::{Context, ID, Object, Result, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use uuid::Uuid;

use super::events::{WALLET_TOPIC, WalletEvent};
use super::model::{
    Invoice, InvoiceFilter, InvoiceLine, InvoiceStatus, TopUp, TopUpStatus, TransactionFilter,
    TransactionType, Wallet, WalletTransaction,
};
use super::{service, topup};
use crate::auth::Identity;
use crate::graphql::{ContextExt, PodiumConnection, connection, parse_id};
use crate::money::Money;
use crate::pagination::{Cursor, PageArgs, page_cost};
use crate::state::AppState;
use crate::users::model::User;

pub type BillingDataLoader = DataLoader<BillingLoader, crate::graphql::loader_cache::EpochCache>;

/// Batches the lines of a page of invoices.
pub struct BillingLoader {
    state: AppState,
    identity: Identity,
}

impl BillingLoader {
    pub fn new(state: AppState, identity: Identity) -> Self {
        BillingLoader { state, identity }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinesOf(pub Uuid);

impl Loader<LinesOf> for BillingLoader {
    type Value = Vec<InvoiceLine>;
    type Error = async_graphql::Error;
    async fn load(&self, keys: &[LinesOf]) -> Result<HashMap<LinesOf, Vec<InvoiceLine>>> {
        let ids: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
        let mut by_invoice: HashMap<LinesOf, Vec<InvoiceLine>> =
            ids.iter().map(|id| (LinesOf(*id), Vec::new())).collect();
        for line in service::lines_of(&self.state, &self.identity, &ids).await? {
            by_invoice
                .entry(LinesOf(line.invoice_id))
                .or_default()
                .push(line);
        }
        Ok(by_invoice)
    }
}

#[Object(name = "Wallet")]
impl Wallet {
    async fn balance(&self) -> Money {
        Money::new(self.balance, &self.currency)
    }
    async fn currency(&self) -> &str {
        &self.currency
    }
    /// The ledger: every movement, newest first.
    #[graphql(complexity = "page_cost(first, child_complexity)")]
    async fn transactions(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        #[graphql(name = "type")] kind: Option<TransactionType>,
    ) -> Result<PodiumConnection<WalletTransaction>> {
        let page = PageArgs::new(first, after.as_deref())?;
        let filter = TransactionFilter {
            user_id: Some(self.user_id),
            kind,
        };
        let found = service::transactions(ctx.state(), ctx.identity(), filter, true, page).await?;
        Ok(connection(
            found,
            |t| Cursor::new(t.created_at, t.id),
            |t| t,
        ))
    }
}

#[Object(name = "WalletTransaction")]
impl WalletTransaction {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    #[graphql(name = "type")]
    async fn kind(&self) -> TransactionType {
        self.kind
    }
    /// Signed: credits positive, debits negative.
    async fn amount(&self) -> Money {
        Money::new(self.amount, &self.currency)
    }
    async fn balance_before(&self) -> Money {
        Money::new(self.balance_before, &self.currency)
    }
    async fn balance_after(&self) -> Money {
        Money::new(self.balance_after, &self.currency)
    }
    /// An invoice number, a PaymentIntent id, ...
    async fn reference(&self) -> Option<&str> {
        self.reference.as_deref()
    }
    async fn description(&self) -> &str {
        &self.description
    }
    async fn subscription_id(&self) -> Option<ID> {
        self.subscription_id.map(|id| ID(id.to_string()))
    }
    async fn invoice_id(&self) -> Option<ID> {
        self.invoice_id.map(|id| ID(id.to_string()))
    }
    /// For a refund: the movement it gives back.
    async fn refund_of(&self) -> Option<ID> {
        self.refund_of.map(|id| ID(id.to_string()))
    }
    async fn user_id(&self) -> ID {
        ID(self.user_id.to_string())
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
}

#[Object(name = "TopUp")]
impl TopUp {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    async fn amount(&self) -> Money {
        Money::new(self.amount, &self.currency)
    }
    async fn status(&self) -> TopUpStatus {
        self.status
    }
    /// Stripe's PaymentIntent id.
    async fn payment_intent_id(&self) -> Option<&str> {
        self.payment_intent_id.as_deref()
    }
    /// Why the payment failed, as Stripe put it.
    async fn failure_message(&self) -> Option<&str> {
        self.failure_message.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
    async fn settled_at(&self) -> Option<DateTime<Utc>> {
        self.settled_at
    }
}

/// A started top-up: confirm its payment with Stripe.js using `clientSecret`; the wallet
/// is credited when Stripe reports the payment succeeded.
#[derive(SimpleObject)]
pub struct CreateTopUpPayload {
    pub top_up: TopUp,
    /// The PaymentIntent's client secret, for Stripe.js (`stripe.confirmPayment`).
    pub client_secret: String,
}

#[derive(SimpleObject)]
pub struct InvoiceLineObject {
    pub description: String,
    pub quantity: i32,
    pub unit_price: Money,
    pub amount: Money,
}

#[Object(name = "Invoice")]
impl Invoice {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    /// `INV-<year>-<number>`, without gaps within a year.
    async fn number(&self) -> &str {
        &self.number
    }
    async fn status(&self) -> InvoiceStatus {
        self.status
    }
    async fn user(&self, ctx: &Context<'_>) -> Result<Option<User>> {
        let loader = ctx.data_unchecked::<DataLoader<crate::users::graphql::UserLoader>>();
        loader.load_one(self.user_id).await
    }
    async fn subscription(
        &self,
        ctx: &Context<'_>,
    ) -> Result<Option<crate::subscriptions::model::Subscription>> {
        use crate::subscriptions::graphql::{SubscriptionDataLoader, SubscriptionKey};
        let Some(id) = self.subscription_id else {
            return Ok(None);
        };
        let loader = ctx.data_unchecked::<SubscriptionDataLoader>();
        loader.load_one(SubscriptionKey(id)).await
    }
    async fn period_start(&self) -> Option<DateTime<Utc>> {
        self.period_start
    }
    async fn period_end(&self) -> Option<DateTime<Utc>> {
        self.period_end
    }
    #[graphql(complexity = "crate::pagination::small_list_cost(child_complexity)")]
    async fn lines(&self, ctx: &Context<'_>) -> Result<Vec<InvoiceLineObject>> {
        let loader = ctx.data_unchecked::<BillingDataLoader>();
        let lines = loader.load_one(LinesOf(self.id)).await?.unwrap_or_default();
        Ok(lines
            .into_iter()
            .map(|l| InvoiceLineObject {
                description: l.description,
                quantity: l.quantity,
                unit_price: Money::new(l.unit_price, &self.currency),
                amount: Money::new(l.amount, &self.currency),
            })
            .collect())
    }
    async fn subtotal(&self) -> Money {
        Money::new(self.subtotal, &self.currency)
    }
    async fn tax(&self) -> Money {
        Money::new(self.tax, &self.currency)
    }
    /// The tax's name (`PODIUM_TAX_NAME`), when the invoice has tax.
    async fn tax_name(&self) -> Option<&str> {
        self.tax_name.as_deref()
    }
    /// The tax rate in percent, e.g. "11.00".
    async fn tax_rate_percent(&self) -> String {
        crate::money::format_amount(i64::from(self.tax_rate_bp), "USD")
    }
    async fn total(&self) -> Money {
        Money::new(self.total, &self.currency)
    }
    async fn issued_at(&self) -> DateTime<Utc> {
        self.issued_at
    }
    async fn paid_at(&self) -> Option<DateTime<Utc>> {
        self.paid_at
    }
}

/// The integrity check's result.
#[Object(name = "BillingIntegrity")]
impl crate::billing::integrity::Report {
    /// No mismatches.
    async fn ok(&self) -> bool {
        self.is_clean()
    }
    async fn checked_wallets(&self) -> i64 {
        self.checked_wallets
    }
    async fn checked_transactions(&self) -> i64 {
        self.checked_transactions
    }
    async fn checked_invoices(&self) -> i64 {
        self.checked_invoices
    }
    async fn checked_plans(&self) -> i64 {
        self.checked_plans
    }
    async fn checked_subscriptions(&self) -> i64 {
        self.checked_subscriptions
    }
    /// Each difference (at most 1000 of a kind).
    async fn mismatches(&self) -> &[crate::billing::integrity::Mismatch] {
        &self.mismatches
    }
    /// Some kind had more mismatches than are listed.
    async fn truncated(&self) -> bool {
        self.truncated
    }
}

/// One difference the integrity check found.
#[Object(name = "BillingMismatch")]
impl crate::billing::integrity::Mismatch {
    /// A stable code, e.g. WALLET_BALANCE, INVOICE_TOTAL, INVOICE_NUMBER_GAP, PLAN_USED_QUOTA.
    async fn kind(&self) -> &str {
        &self.kind
    }
    /// What it is about, with ids.
    async fn subject(&self) -> &str {
        &self.subject
    }
    /// What the records imply.
    async fn expected(&self) -> &str {
        &self.expected
    }
    /// What is stored.
    async fn found(&self) -> &str {
        &self.found
    }
    async fn message(&self) -> &str {
        &self.message
    }
}

/// Administrators' billing figures, money in the platform currency.
pub struct BillingStatsObject {
    stats: crate::billing::stats::BillingStats,
    currency: String,
}

#[Object(name = "BillingStats")]
impl BillingStatsObject {
    /// Monthly recurring revenue: the monthly prices of ACTIVE and PAST_DUE subscriptions.
    async fn mrr(&self) -> Money {
        Money::new(self.stats.mrr, &self.currency)
    }
    async fn active_subscriptions(&self) -> i64 {
        self.stats.active_subscriptions
    }
    async fn past_due(&self) -> i64 {
        self.stats.past_due
    }
    async fn suspended(&self) -> i64 {
        self.stats.suspended
    }
    /// Subscription, renewal and upgrade charges minus refunds, in the last 30 days.
    #[graphql(name = "revenueLast30Days")]
    async fn revenue_last_30_days(&self) -> Money {
        Money::new(self.stats.revenue_last_30_days, &self.currency)
    }
    /// Wallet top-ups in the last 30 days.
    #[graphql(name = "topUpsLast30Days")]
    async fn top_ups_last_30_days(&self) -> Money {
        Money::new(self.stats.top_ups_last_30_days, &self.currency)
    }
}

#[derive(Default)]
pub struct BillingQuery;

#[Object]
impl BillingQuery {
    /// The caller's wallet.
    async fn wallet(&self, ctx: &Context<'_>) -> Result<Wallet> {
        Ok(service::my_wallet(ctx.state(), ctx.identity()).await?)
    }

    /// The caller's top-ups, newest first.
    #[graphql(complexity = "page_cost(first, child_complexity)")]
    async fn my_top_ups(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<PodiumConnection<TopUp>> {
        let page = PageArgs::new(first, after.as_deref())?;
        let found = topup::my_top_ups(ctx.state(), ctx.identity(), page).await?;
        Ok(connection(
            found,
            |t| Cursor::new(t.created_at, t.id),
            |t| t,
        ))
    }

    /// The caller's invoices, newest first.
    #[graphql(complexity = "page_cost(first, child_complexity)")]
    async fn my_invoices(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<PodiumConnection<Invoice>> {
        let page = PageArgs::new(first, after.as_deref())?;
        let found = service::invoices(
            ctx.state(),
            ctx.identity(),
            InvoiceFilter::default(),
            true,
            page,
        )
        .await?;
        Ok(connection(
            found,
            |i| Cursor::new(i.created_at, i.id),
            |i| i,
        ))
    }

    /// Administrators: every invoice, newest first (optionally one user's).
    #[graphql(complexity = "page_cost(first, child_complexity)")]
    async fn invoices(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        user_id: Option<ID>,
    ) -> Result<PodiumConnection<Invoice>> {
        let page = PageArgs::new(first, after.as_deref())?;
        let filter = InvoiceFilter {
            user_id: user_id
                .as_ref()
                .map(|id| parse_id("userId", id))
                .transpose()?,
            ..Default::default()
        };
        let found = service::invoices(ctx.state(), ctx.identity(), filter, false, page).await?;
        Ok(connection(
            found,
            |i| Cursor::new(i.created_at, i.id),
            |i| i,
        ))
    }

    /// One invoice: its owner's, or any for administrators.
    async fn invoice(&self, ctx: &Context<'_>, id: ID) -> Result<Invoice> {
        let id = parse_id("id", &id)?;
        Ok(service::invoice(ctx.state(), ctx.identity(), id).await?)
    }

    /// Administrators: recomputes every wallet from its ledger, every invoice from its
    /// lines and payment, the invoice numbering and every plan's used quota, and lists
    /// each mismatch (the CLI's `podium billing verify`).
    async fn billing_integrity(
        &self,
        ctx: &Context<'_>,
    ) -> Result<crate::billing::integrity::Report> {
        Ok(service::integrity(ctx.state(), ctx.identity()).await?)
    }

    /// Administrators: MRR, subscriptions by status, revenue and top-ups of the last 30 days.
    async fn billing_stats(&self, ctx: &Context<'_>) -> Result<BillingStatsObject> {
        let stats = service::stats(ctx.state(), ctx.identity()).await?;
        Ok(BillingStatsObject {
            stats,
            currency: ctx.state().settings.default_currency.clone(),
        })
    }

    /// Administrators: every wallet movement, newest first.
    #[graphql(complexity = "page_cost(first, child_complexity)")]
    async fn transactions(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        user_id: Option<ID>,
        #[graphql(name = "type")] kind: Option<TransactionType>,
    ) -> Result<PodiumConnection<WalletTransaction>> {
        let page = PageArgs::new(first, after.as_deref())?;
        let filter = TransactionFilter {
            user_id: user_id
                .as_ref()
                .map(|id| parse_id("userId", id))
                .transpose()?,
            kind,
        };
        let found = service::transactions(ctx.state(), ctx.identity(), filter, false, page).await?;
        Ok(connection(
            found,
            |t| Cursor::new(t.created_at, t.id),
            |t| t,
        ))
    }
}

#[derive(Default)]
pub struct BillingMutation;

#[Object]
impl BillingMutation {
    /// Starts a top-up of the caller's wallet by card: `amount` is a decimal string in
    /// major units of the platform currency (limits: `PODIUM_TOP_UP_MIN`/`MAX`). The same
    /// `idempotencyKey` within 24 h returns the same top-up and client secret.
    async fn create_top_up(
        &self,
        ctx: &Context<'_>,
        amount: String,
        idempotency_key: Option<String>,
    ) -> Result<CreateTopUpPayload> {
        let created = topup::create_top_up(
            ctx.state(),
            ctx.identity(),
            &amount,
            idempotency_key.as_deref(),
        )
        .await?;
        Ok(CreateTopUpPayload {
            top_up: created.top_up,
            client_secret: created.client_secret,
        })
    }

    /// Administrators: credits (positive) or debits (negative, never below zero) a
    /// wallet, e.g. "-5000" or "25000.50", with the reason recorded and audited.
    async fn adjust_wallet_balance(
        &self,
        ctx: &Context<'_>,
        user_id: ID,
        amount: String,
        reason: String,
    ) -> Result<WalletTransaction> {
        let user_id = parse_id("userId", &user_id)?;
        let amount = crate::money::parse_signed_amount(
            "amount",
            &amount,
            &ctx.state().settings.default_currency,
        )?;
        Ok(service::adjust_balance(ctx.state(), ctx.identity(), user_id, amount, reason).await?)
    }

    /// Administrators: gives (part of) a debit back to the wallet; without an amount,
    /// all that is left unrefunded.
    async fn refund_transaction(
        &self,
        ctx: &Context<'_>,
        id: ID,
        amount: Option<String>,
    ) -> Result<WalletTransaction> {
        let id = parse_id("id", &id)?;
        let amount = amount
            .map(|a| {
                crate::money::parse_amount("amount", &a, &ctx.state().settings.default_currency)
            })
            .transpose()?;
        Ok(service::refund(ctx.state(), ctx.identity(), id, amount).await?)
    }
}

/// A wallet movement as it commits.
#[derive(SimpleObject)]
pub struct WalletChange {
    pub balance: Money,
    pub transaction: WalletTransaction,
}

#[derive(Default)]
pub struct BillingSubscription;

#[Subscription]
impl BillingSubscription {
    /// The caller's wallet, each time it moves (a top-up landing, a renewal, ...).
    async fn wallet_changed(&self, ctx: &Context<'_>) -> Result<impl Stream<Item = WalletChange>> {
        Ok(crate::graphql::live(
            ctx,
            WALLET_TOPIC,
            |state, identity, event: WalletEvent| async move {
                let seen = service::wallet_event_for(&state, &identity, &event).await?;
                Ok(seen.map(|transaction| WalletChange {
                    balance: Money::new(transaction.balance_after, &transaction.currency),
                    transaction,
                }))
            },
        )?)
    }
}
