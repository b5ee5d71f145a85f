DROP INDEX notifications_rejected;
