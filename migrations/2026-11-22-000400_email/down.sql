DROP TABLE notification_preferences;
DROP TABLE email_tokens;
DROP TABLE email_outbox;
