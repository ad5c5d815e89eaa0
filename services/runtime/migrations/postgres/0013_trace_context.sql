-- The W3C traceparent of the call that wrote an outbox event ('' when it was not traced): the
-- relay's and the consumers' spans link to it, so an asynchronous effect can be followed back to
-- its request. And an index for the retention task's scan of old idempotency records.

ALTER TABLE outbox ADD COLUMN trace_parent TEXT NOT NULL DEFAULT '';
CREATE INDEX idempotency_created_at ON idempotency (created_at);
