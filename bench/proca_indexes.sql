-- The indexes a Proca database has after its migrations (Proca 3.4 up to 2026), beside the
-- primary keys: none on updated_at. The data sets of bench/scale.py have exactly these, so
-- that they measure proca-stats on a database as Proca leaves it.
CREATE INDEX IF NOT EXISTS action_pages_campaign_id_index ON action_pages (campaign_id);
CREATE INDEX IF NOT EXISTS supporters_fingerprint_index ON supporters (fingerprint);
CREATE INDEX IF NOT EXISTS supporters_processing_status_index ON supporters (processing_status);
CREATE INDEX IF NOT EXISTS supporters_action_page_id_index ON supporters (action_page_id);
CREATE INDEX IF NOT EXISTS supporters_dupe_rank_index ON supporters (dupe_rank);
CREATE INDEX IF NOT EXISTS actions_action_type_index ON actions (action_type);
CREATE INDEX IF NOT EXISTS actions_processing_status_index ON actions (processing_status);
CREATE INDEX IF NOT EXISTS actions_ref_index ON actions (ref);
CREATE INDEX IF NOT EXISTS actions_campaign_id_index ON actions (campaign_id);
CREATE INDEX IF NOT EXISTS actions_action_page_id_index ON actions (action_page_id);
CREATE INDEX IF NOT EXISTS actions_supporter_id_index ON actions (supporter_id);
CREATE INDEX IF NOT EXISTS actions_partial_processing_status_index
    ON actions (supporter_id, action_page_id, campaign_id) WHERE processing_status IN (3, 4);
CREATE INDEX IF NOT EXISTS actions_partial_status_inserted_at_index
    ON actions (processing_status, inserted_at) WHERE testing;
CREATE INDEX IF NOT EXISTS partial_inserted_at_id_index
    ON actions (id, inserted_at) WHERE processing_status IN (0, 3);
