-- group: user_short
-- entity: user_id
-- horizon: 1h
-- lateness: 2s
-- description: the user's payments in the last 10 minutes and the last hour, this payment included
SELECT
    event_id,
    count(*) OVER last_10m AS user_count_10m,
    sum(amount) OVER last_10m AS user_sum_10m,
    avg(amount) OVER last_10m AS user_mean_10m,
    stddev_samp(amount) OVER last_10m AS user_std_10m,
    max(amount) OVER last_10m AS user_max_10m,
    count(*) OVER last_1h AS user_count_1h,
    sum(amount) OVER last_1h AS user_sum_1h,
    avg(amount) OVER last_1h AS user_mean_1h,
    stddev_samp(amount) OVER last_1h AS user_std_1h,
    max(amount) OVER last_1h AS user_max_1h
FROM events
WINDOW
    last_10m AS (PARTITION BY user_id ORDER BY ts RANGE BETWEEN INTERVAL 10 MINUTES PRECEDING AND CURRENT ROW),
    last_1h AS (PARTITION BY user_id ORDER BY ts RANGE BETWEEN INTERVAL 1 HOUR PRECEDING AND CURRENT ROW)
