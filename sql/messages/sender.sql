-- group: sender
-- entity: sender
-- horizon: 1h
-- description: how many messages the sender sent in the last 10 minutes and the last hour (spam comes in bursts)
SELECT
    event_id,
    count(*) OVER last_10m AS sender_messages_10m,
    count(*) OVER last_1h AS sender_messages_1h
FROM events
WINDOW
    last_10m AS (PARTITION BY sender ORDER BY ts RANGE BETWEEN INTERVAL 10 MINUTES PRECEDING AND CURRENT ROW),
    last_1h AS (PARTITION BY sender ORDER BY ts RANGE BETWEEN INTERVAL 1 HOUR PRECEDING AND CURRENT ROW)
