-- group: user_day
-- entity: user_id
-- horizon: 24h
-- lateness: 2s
-- description: the user's last 24 hours: amounts, time since the previous payment, amount vs. recent mean
SELECT
    event_id,
    count(*) OVER last_24h AS user_count_24h,
    sum(amount) OVER last_24h AS user_sum_24h,
    avg(amount) OVER last_24h AS user_mean_24h,
    stddev_samp(amount) OVER last_24h AS user_std_24h,
    max(amount) OVER last_24h AS user_max_24h,
    -- seconds since the user's previous payment (at an earlier ts), NULL if none in the last 24 hours
    date_diff('millisecond', max(ts) OVER before_24h, ts) / 1000.0 AS user_seconds_since_previous,
    -- this amount over the mean of the user's earlier payments in the last 24 hours
    amount / NULLIF(avg(amount) OVER before_24h, 0) AS user_amount_vs_mean_24h
FROM events
WINDOW
    last_24h AS (PARTITION BY user_id ORDER BY ts RANGE BETWEEN INTERVAL 24 HOURS PRECEDING AND CURRENT ROW),
    before_24h AS (
        PARTITION BY user_id ORDER BY ts
        RANGE BETWEEN INTERVAL 24 HOURS PRECEDING AND INTERVAL 1 MILLISECOND PRECEDING
    )
