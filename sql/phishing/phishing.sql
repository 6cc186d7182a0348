-- group: phishing
-- entity: none
-- horizon: 0s
-- description: pass-through: the Phishing data set's nine fields, unchanged, as features
SELECT * EXCLUDE (ts) FROM events
