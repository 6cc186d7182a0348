-- group: zipcode_hour
-- entity: zipcode
-- horizon: 1h
-- description: the applications from the applicant's zipcode in the last hour: how many, their mean salary, loan and house value, and how this applicant compares
SELECT
    event_id,
    count(*) OVER last_1h AS zipcode_count_1h,
    avg(salary) OVER last_1h AS zipcode_mean_salary_1h,
    avg(loan) OVER last_1h AS zipcode_mean_loan_1h,
    avg(hvalue) OVER last_1h AS zipcode_mean_hvalue_1h,
    salary / (avg(salary) OVER last_1h + 1) AS salary_to_zipcode_1h,
    loan / (avg(loan) OVER last_1h + 1) AS loan_to_zipcode_1h
FROM events
WINDOW last_1h AS (PARTITION BY zipcode ORDER BY ts RANGE BETWEEN INTERVAL 1 HOUR PRECEDING AND CURRENT ROW)
