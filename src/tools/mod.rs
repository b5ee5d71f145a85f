//! Tools around the server, kept apart from the daemon: `payhook fixtures` makes signed
//! notifications for new orders, and `payhook replay` sends recorded notifications and checks the
//! answers. They use the library; nothing on the path of money uses them.

pub mod fixtures;
pub mod replay;
