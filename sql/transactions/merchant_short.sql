-- group: merchant_short
-- entity: merchant_id
-- horizon: 1h
-- lateness: 2s
-- description: the merchant's payments in the last 10 minutes and the last hour, this payment included
SELECT
    event_id,
    count(*) OVER last_10m AS merchant_count_10m,
    sum(amount) OVER last_10m AS merchant_sum_10m,
    avg(amount) OVER last_10m AS merchant_mean_10m,
    stddev_samp(amount) OVER last_10m AS merchant_std_10m,
    max(amount) OVER last_10m AS merchant_max_10m,
    count(*) OVER last_1h AS merchant_count_1h,
    sum(amount) OVER last_1h AS merchant_sum_1h,
    avg(amount) OVER last_1h AS merchant_mean_1h,
    stddev_samp(amount) OVER last_1h AS merchant_std_1h,
    max(amount) OVER last_1h AS merchant_max_1h
FROM events
WINDOW
    last_10m AS (PARTITION BY merchant_id ORDER BY ts RANGE BETWEEN INTERVAL 10 MINUTES PRECEDING AND CURRENT ROW),
    last_1h AS (PARTITION BY merchant_id ORDER BY ts RANGE BETWEEN INTERVAL 1 HOUR PRECEDING AND CURRENT ROW)
