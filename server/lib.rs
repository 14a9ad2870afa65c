//! iapd
