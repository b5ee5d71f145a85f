-- Rejected requests are bounded per channel: the newest `inbox.keep_rejected` are kept, and the
-- rest deleted as new ones arrive. This index finds a channel's rejected rows newest first
-- without reading the verified notifications around them; it holds rejected rows only, so
-- crediting pays nothing for it.
CREATE INDEX notifications_rejected ON notifications (channel, id) WHERE outcome = 'rejected';
