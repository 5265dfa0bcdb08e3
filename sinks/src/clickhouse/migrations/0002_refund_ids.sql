-- Migration 2: the ids of the refunds counted in `refunded`, each counted once, so an analyst can
-- see which refunds an order's net reflects. Rows written before this migration read as [].
ALTER TABLE attributions ADD COLUMN refund_ids Array(String) AFTER refund_status
;
-- A view's columns are fixed when it is created: re-create it so that it shows the new column.
DROP TABLE IF EXISTS attributions_current
;
CREATE VIEW attributions_current AS
SELECT * FROM attributions FINAL
