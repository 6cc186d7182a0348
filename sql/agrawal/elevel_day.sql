-- group: elevel_day
-- entity: elevel
-- horizon: 1d
-- description: applicants with the same education level over the last day: how many, their mean salary and loan
SELECT
    event_id,
    count(*) OVER last_1d AS elevel_count_1d,
    avg(salary) OVER last_1d AS elevel_mean_salary_1d,
    avg(loan) OVER last_1d AS elevel_mean_loan_1d
FROM events
WINDOW last_1d AS (PARTITION BY elevel ORDER BY ts RANGE BETWEEN INTERVAL 1 DAY PRECEDING AND CURRENT ROW)
