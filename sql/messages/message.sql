-- group: message
-- entity: none
-- horizon: 0s
-- description: the message's text (for the learner's text extractor), its length, links and alarm words
SELECT
    event_id,
    body,
    channel,
    length(body) AS body_length,
    len(regexp_extract_all(body, '(https?://|www\.)')) AS body_links,
    len(regexp_extract_all(lower(body), '\b(free|prize|winner|urgent|verify|wallet|crypto|bitcoin|overdue)\b'))
        AS body_alarm_words,
    regexp_matches(body, '[!?]{1}\s*$') AS body_ends_excited
FROM events
