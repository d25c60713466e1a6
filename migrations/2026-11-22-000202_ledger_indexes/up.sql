-- A subscription's movements (credits of a period's debits read them under the wallet's
-- lock) and an invoice's payment (the integrity check joins on it) without a scan.
CREATE INDEX wallet_transactions_subscription_idx ON wallet_transactions (subscription_id)
    WHERE subscription_id IS NOT NULL;
CREATE INDEX wallet_transactions_invoice_idx ON wallet_transactions (invoice_id)
    WHERE invoice_id IS NOT NULL;
