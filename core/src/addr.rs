//! Address newtypes. A bare `SocketAddr` crossing a module boundary says
//! nothing about whose address it is; these do.

use std::fmt;
use std::net::SocketAddr;

macro_rules! addr_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
        pub struct $name(pub SocketAddr);

        impl $name {
            pub fn get(self) -> SocketAddr {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<SocketAddr> for $name {
            fn from(addr: SocketAddr) -> Self {
                Self(addr)
            }
        }
    };
}

addr_newtype!(
    /// The address a connection was originally sent to, before iptables
    /// redirected it to the proxy (`SO_ORIGINAL_DST`).
    OrigDstAddr
);
addr_newtype!(
    /// The remote address of an accepted connection.
    ClientAddr
);
addr_newtype!(
    /// The local address a connection was accepted on.
    ListenAddr
);
