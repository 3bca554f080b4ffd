//! What tollgate's layers hand on to the layers and handlers inside them, kept as one
//! request extension.
//!
//! Each `http::Extensions::insert` boxes its value and may grow a hash map; a stack
//! that handed on its route, trace id, client, principal and session one by one paid
//! five of them per request. They travel together instead, and are read through
//! [`CarryExt`]:
//!
//! ```
//! use http::Extensions;
//! use tollgate_core::{CarryExt, TraceId};
//!
//! let mut extensions = Extensions::new();
//! let trace_id = TraceId::random();
//! extensions.carry(trace_id);
//! assert_eq!(extensions.carried::<TraceId>(), Some(&trace_id));
//! ```
//!
//! A value inserted as a plain extension (a custom authentication layer inserting its
//! own [`Principal`], a test) is still found: [`CarryExt::carried`] looks there when
//! the carried slot is empty.

use http::Extensions;

use crate::{ClientContext, Principal, Route, SessionInfo, TraceId};

mod sealed {
    use super::*;

    /// The one extension the carried values live in.
    #[derive(Clone, Default)]
    pub struct Bundle {
        pub(super) route: Option<Route>,
        pub(super) trace_id: Option<TraceId>,
        pub(super) client: Option<ClientContext>,
        pub(super) principal: Option<Principal>,
        pub(super) session: Option<SessionInfo>,
    }

    /// Which slot of [`Bundle`] a type lives in.
    pub trait Slot: Sized {
        fn slot(bundle: &Bundle) -> &Option<Self>;
        fn slot_mut(bundle: &mut Bundle) -> &mut Option<Self>;
    }
}

use sealed::Slot;

/// A value tollgate's layers hand on through the request: [`Route`], [`TraceId`],
/// [`ClientContext`], [`Principal`] and [`SessionInfo`].
pub trait Carried: Slot + Clone + Send + Sync + 'static {}

macro_rules! carried {
    ($($ty:ty => $field:ident),* $(,)?) => {$(
        impl Slot for $ty {
            fn slot(bundle: &sealed::Bundle) -> &Option<Self> {
                &bundle.$field
            }
            fn slot_mut(bundle: &mut sealed::Bundle) -> &mut Option<Self> {
                &mut bundle.$field
            }
        }
        impl Carried for $ty {}
    )*};
}

carried! {
    Route => route,
    TraceId => trace_id,
    ClientContext => client,
    Principal => principal,
    SessionInfo => session,
}

/// Reads and writes the [`Carried`] values of a request's `http::Extensions`.
pub trait CarryExt {
    /// The carried `T`, else a `T` inserted as a plain extension.
    fn carried<T: Carried>(&self) -> Option<&T>;

    /// Carries `value` for the inner layers and the handler, replacing an earlier one.
    fn carry<T: Carried>(&mut self, value: T);
}

impl CarryExt for Extensions {
    fn carried<T: Carried>(&self) -> Option<&T> {
        match self.get::<sealed::Bundle>().and_then(|c| T::slot(c).as_ref()) {
            Some(value) => Some(value),
            None => self.get::<T>(),
        }
    }

    fn carry<T: Carried>(&mut self, value: T) {
        *T::slot_mut(self.get_or_insert_default::<sealed::Bundle>()) = Some(value);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{ClientConfig, Pseudonymizer, SessionHealth, SessionReasons};

    fn session(health: SessionHealth) -> SessionInfo {
        let p = Pseudonymizer::ephemeral(Duration::from_secs(3600)).unwrap();
        let pseudonym = p.pseudonym(crate::Domain::new("test"), b"session");
        SessionInfo {
            session: pseudonym,
            fingerprint: pseudonym,
            health,
            reasons: SessionReasons::default(),
        }
    }

    #[test]
    fn values_travel_in_one_extension() {
        let p = Pseudonymizer::ephemeral(Duration::from_secs(3600)).unwrap();
        let client = ClientConfig::default().context([10, 0, 0, 1].into(), &Default::default(), &p);
        let trace_id = TraceId::random();
        let mut ext = Extensions::new();
        ext.carry(client);
        ext.carry(session(SessionHealth::Suspicious));
        ext.carry(trace_id);
        assert_eq!(ext.len(), 1);
        assert_eq!(ext.carried::<ClientContext>(), Some(&client));
        assert_eq!(ext.carried::<TraceId>(), Some(&trace_id));
        assert_eq!(
            ext.carried::<SessionInfo>().unwrap().health,
            SessionHealth::Suspicious
        );
        assert!(ext.carried::<Principal>().is_none());
        assert!(ext.carried::<Route>().is_none());
    }

    #[test]
    fn a_later_value_replaces_an_earlier_one() {
        let mut ext = Extensions::new();
        ext.carry(session(SessionHealth::Healthy));
        ext.carry(session(SessionHealth::Unhealthy));
        assert_eq!(
            ext.carried::<SessionInfo>().unwrap().health,
            SessionHealth::Unhealthy
        );
    }

    #[test]
    fn a_plain_extension_is_found_when_nothing_was_carried() {
        let mut ext = Extensions::new();
        ext.insert(session(SessionHealth::Suspicious));
        ext.carry(TraceId::random());
        assert_eq!(
            ext.carried::<SessionInfo>().unwrap().health,
            SessionHealth::Suspicious
        );
        // Once carried, the carried value is the one read.
        ext.carry(session(SessionHealth::Healthy));
        assert_eq!(
            ext.carried::<SessionInfo>().unwrap().health,
            SessionHealth::Healthy
        );
    }
}
