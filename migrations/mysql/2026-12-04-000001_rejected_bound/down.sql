ALTER TABLE notifications DROP KEY notifications_rejected;
