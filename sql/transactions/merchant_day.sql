-- group: merchant_day
-- entity: merchant_id
-- horizon: 24h
-- lateness: 2s
-- description: the merchant's payments in the last 24 hours, this payment included
SELECT
    event_id,
    count(*) OVER last_24h AS merchant_count_24h,
    sum(amount) OVER last_24h AS merchant_sum_24h,
    avg(amount) OVER last_24h AS merchant_mean_24h,
    stddev_samp(amount) OVER last_24h AS merchant_std_24h,
    max(amount) OVER last_24h AS merchant_max_24h
FROM events
WINDOW
    last_24h AS (PARTITION BY merchant_id ORDER BY ts RANGE BETWEEN INTERVAL 24 HOURS PRECEDING AND CURRENT ROW)
