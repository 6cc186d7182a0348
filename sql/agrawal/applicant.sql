-- group: applicant
-- entity: none
-- horizon: 0s
-- description: the applicant's own fields as the generator gives them (the loan rule is a function of these), with income and loan to income
SELECT
    event_id,
    salary,
    commission,
    salary + commission AS income,
    age,
    elevel,
    car,
    zipcode,
    hvalue,
    hyears,
    loan,
    loan / (salary + commission + 1) AS loan_to_income
FROM events
