//! Webhooks: tenants' endpoints, the outbox of events (written with the state change they
//! report, in the caller's transaction), the per-endpoint delivery queue the dispatcher works
//! through under an endpoint lease, and the delivery history the API pages.
//!
//! Ordering: deliveries of one endpoint go out in `seq` order, one at a time (the endpoint's
//! lease), so events of one install reach a receiver in the order they were written. On
//! PostgreSQL [`emit`] takes a transaction-scoped advisory lock per tenant right before taking a
//! `seq`, so a tenant's events commit in `seq` order (a later `seq` is never visible before an
//! earlier one); SQLite has a single writer anyway.

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text};

use crate::models::{NewWebhookEvent, WebhookDelivery, WebhookEndpoint, WebhookEvent};
use crate::repo::page::{after_key, fetch_count, After, AnyBackend, Page};
use crate::schema::webhook_deliveries::dsl as d;
use crate::schema::webhook_endpoints::dsl as e;
use crate::schema::webhook_events::dsl as ev;
use crate::{AnyConnection, DbError};

/// Delivery states.
pub const PENDING: &str = "pending";
pub const DELIVERED: &str = "delivered";
pub const FAILED: &str = "failed";

pub fn insert_endpoint(
    conn: &mut AnyConnection,
    new: &WebhookEndpoint,
) -> Result<WebhookEndpoint, DbError> {
    Ok(diesel::insert_into(e::webhook_endpoints)
        .values(new)
        .returning(crate::schema::webhook_endpoints::all_columns)
        .get_result(conn)?)
}

pub fn find_endpoint(
    conn: &mut AnyConnection,
    tenant_id: &str,
    id: &str,
) -> Result<Option<WebhookEndpoint>, DbError> {
    Ok(e::webhook_endpoints
        .filter(e::tenant_id.eq(tenant_id))
        .filter(e::id.eq(id))
        .select(WebhookEndpoint::as_select())
        .first(conn)
        .optional()?)
}

/// Unscoped: the dispatcher reaches an endpoint through its queue.
pub fn find_endpoint_by_id(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<Option<WebhookEndpoint>, DbError> {
    Ok(e::webhook_endpoints
        .find(id)
        .select(WebhookEndpoint::as_select())
        .first(conn)
        .optional()?)
}

/// One page of the tenant's endpoints in `(created_at, id)` order.
pub fn list_endpoints(
    conn: &mut AnyConnection,
    tenant_id: &str,
    after: Option<&After>,
    limit: i64,
) -> Result<Page<WebhookEndpoint>, DbError> {
    let query = e::webhook_endpoints
        .filter(e::tenant_id.eq(tenant_id))
        .into_boxed::<AnyBackend>();
    let rows = after_key!(query, e::created_at, e::id, after)
        .order((e::created_at.asc(), e::id.asc()))
        .limit(fetch_count(limit))
        .select(WebhookEndpoint::as_select())
        .load(conn)?;
    Ok(Page::from_rows(rows, limit, |r: &WebhookEndpoint| After {
        created_at: r.created_at,
        id: r.id.clone(),
    }))
}

/// Deletes the endpoint and its deliveries. False if the tenant has no such endpoint.
pub fn delete_endpoint(
    conn: &mut AnyConnection,
    tenant_id: &str,
    id: &str,
) -> Result<bool, DbError> {
    diesel::delete(
        d::webhook_deliveries
            .filter(d::tenant_id.eq(tenant_id))
            .filter(d::endpoint_id.eq(id)),
    )
    .execute(conn)?;
    let n = diesel::delete(
        e::webhook_endpoints
            .filter(e::tenant_id.eq(tenant_id))
            .filter(e::id.eq(id)),
    )
    .execute(conn)?;
    Ok(n == 1)
}

/// Writes `event` to the outbox and one pending delivery per enabled endpoint of its tenant
/// whose filter takes its type. Call it inside the transaction of the state change (so the
/// event exists exactly when the change committed), after the change's own statements: on
/// PostgreSQL it takes the tenant's event lock, held until the commit. Returns the deliveries
/// queued.
///
/// Why `seq` order is commit order on PostgreSQL: `seq` comes from a sequence, taken by the
/// INSERT of the event, and a tenant's writers take `seq`s only while holding the tenant's
/// transaction-scoped advisory lock (`pg_advisory_xact_lock`, released by COMMIT or ROLLBACK
/// only). So when a writer takes `seq` n, every writer of that tenant with a smaller `seq` has
/// already committed or rolled back: a dispatcher that sees event n can no longer miss an
/// earlier one. Everything that does not take a `seq` (the change's own statements, reading
/// the endpoints) runs before the lock; under it run one statement (event and deliveries
/// together) and the COMMIT.
pub fn emit(conn: &mut AnyConnection, event: &NewWebhookEvent) -> Result<usize, DbError> {
    if matches!(conn, AnyConnection::Postgresql(_)) {
        let endpoints = matching_endpoints(conn, event)?;
        if let AnyConnection::Postgresql(pg) = conn {
            // From here to the COMMIT the tenant's other event writers wait (see above).
            diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind::<Text, _>(format!("switchboard.webhooks:{}", event.tenant_id))
                .execute(pg)?;
            // The event and its deliveries in one round trip: the deliveries take the `seq`
            // the event's INSERT returned (the data-modifying CTE runs once, even for no
            // endpoint).
            return Ok(diesel::sql_query(
                "WITH ev AS ( \
                   INSERT INTO webhook_events \
                     (id, tenant_id, event_type, install_id, payload, created_at) \
                   VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq) \
                 INSERT INTO webhook_deliveries \
                   (endpoint_id, event_seq, tenant_id, state, attempts, next_attempt_at, retry_from) \
                 SELECT ep, ev.seq, $2, $7, 0, $6, $6 FROM ev, unnest($8::text[]) AS ep",
            )
            .bind::<Text, _>(&event.id)
            .bind::<Text, _>(&event.tenant_id)
            .bind::<Text, _>(&event.event_type)
            .bind::<Nullable<Text>, _>(&event.install_id)
            .bind::<Text, _>(&event.payload)
            .bind::<BigInt, _>(event.created_at)
            .bind::<Text, _>(PENDING)
            .bind::<Array<Text>, _>(&endpoints)
            .execute(pg)?);
        }
    }
    // SQLite (one writer): the INSERT first. In a deferred transaction a read before the first
    // write would have to upgrade its lock, which SQLite refuses (SQLITE_BUSY) instead of
    // waiting.
    let seq: i64 = diesel::insert_into(ev::webhook_events)
        .values(event)
        .returning(ev::seq)
        .get_result(conn)?;
    let endpoints = matching_endpoints(conn, event)?;
    if endpoints.is_empty() {
        return Ok(0);
    }
    let rows: Vec<WebhookDelivery> = endpoints
        .into_iter()
        .map(|endpoint_id| WebhookDelivery {
            endpoint_id,
            event_seq: seq,
            tenant_id: event.tenant_id.clone(),
            state: PENDING.to_owned(),
            attempts: 0,
            next_attempt_at: event.created_at,
            retry_from: event.created_at,
            last_status: None,
            last_error: None,
            last_attempt_at: None,
            delivered_at: None,
        })
        .collect();
    // A multi-row INSERT exists per backend only (not on `AnyConnection`'s backend).
    let query = diesel::insert_into(d::webhook_deliveries).values(rows.as_slice());
    Ok(match conn {
        AnyConnection::Postgresql(c) => query.execute(c)?,
        AnyConnection::Sqlite(c) => query.execute(c)?,
    })
}

/// The ids of the tenant's enabled endpoints whose filter takes the event's type.
fn matching_endpoints(
    conn: &mut AnyConnection,
    event: &NewWebhookEvent,
) -> Result<Vec<String>, DbError> {
    Ok(e::webhook_endpoints
        .filter(e::tenant_id.eq(&event.tenant_id))
        .filter(e::disabled_at.is_null())
        .select((e::id, e::events))
        .load::<(String, String)>(conn)?
        .into_iter()
        .filter(|(_, events)| filter_takes(events, &event.event_type))
        .map(|(id, _)| id)
        .collect())
}

/// An endpoint's stored event filter (space-separated types; empty: every type) takes this type.
fn filter_takes(events: &str, event_type: &str) -> bool {
    events.trim().is_empty() || events.split_whitespace().any(|e| e == event_type)
}

/// The type of the install's latest event, if it has one (`install.recovered` follows an
/// `install.refresh_failing` only).
pub fn latest_install_event(
    conn: &mut AnyConnection,
    install_id: &str,
) -> Result<Option<String>, DbError> {
    Ok(ev::webhook_events
        .filter(ev::install_id.eq(install_id))
        .order(ev::seq.desc())
        .select(ev::event_type)
        .first(conn)
        .optional()?)
}

/// Enabled endpoints with a pending delivery due at `now` whose lease is free, at most
/// `limit` (a disabled endpoint's deliveries wait until it is enabled again).
pub fn due_endpoints(
    conn: &mut AnyConnection,
    now: i64,
    limit: i64,
) -> Result<Vec<String>, DbError> {
    Ok(d::webhook_deliveries
        .inner_join(e::webhook_endpoints)
        .filter(d::state.eq(PENDING))
        .filter(e::disabled_at.is_null())
        .filter(d::next_attempt_at.le(now))
        .filter(e::lease_until.is_null().or(e::lease_until.le(now)))
        .select(d::endpoint_id)
        .distinct()
        .limit(limit)
        .load(conn)?)
}

/// Takes the endpoint's delivery lease for `owner` until `now + ttl_ms` (or extends it). True
/// if `owner` holds it. A disabled endpoint is never claimed (false): the condition is part of
/// the UPDATE, so on PostgreSQL a claim racing a disable waits for it and sees it committed.
pub fn claim_endpoint(
    conn: &mut AnyConnection,
    id: &str,
    owner: &str,
    now: i64,
    ttl_ms: i64,
) -> Result<bool, DbError> {
    let n = diesel::update(
        e::webhook_endpoints
            .filter(e::id.eq(id))
            .filter(e::disabled_at.is_null())
            .filter(
                e::lease_until
                    .is_null()
                    .or(e::lease_until.le(now))
                    .or(e::lease_owner.eq(owner)),
            ),
    )
    .set((
        e::lease_owner.eq(owner),
        e::lease_until.eq(now.saturating_add(ttl_ms)),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

pub fn release_endpoint(conn: &mut AnyConnection, id: &str, owner: &str) -> Result<bool, DbError> {
    let n = diesel::update(
        e::webhook_endpoints
            .filter(e::id.eq(id))
            .filter(e::lease_owner.eq(owner)),
    )
    .set((
        e::lease_owner.eq(None::<String>),
        e::lease_until.eq(None::<i64>),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// The delivery `owner` may attempt now: the endpoint's oldest pending delivery (the head of
/// its queue) with its event, if it is due at `now`, the endpoint is enabled and `owner` holds
/// its lease. The dispatcher reads it right before each send, so a disable committed before
/// this statement stops the endpoint's next attempt (one already sent may finish). None when
/// the queue is empty, its head not due, the endpoint disabled or the lease someone else's.
pub fn head(
    conn: &mut AnyConnection,
    endpoint_id: &str,
    owner: &str,
    now: i64,
) -> Result<Option<(WebhookDelivery, WebhookEvent)>, DbError> {
    let head = d::webhook_deliveries
        .inner_join(ev::webhook_events)
        .inner_join(e::webhook_endpoints)
        .filter(d::endpoint_id.eq(endpoint_id))
        .filter(d::state.eq(PENDING))
        .filter(e::disabled_at.is_null())
        .filter(e::lease_owner.eq(owner))
        .order(d::event_seq.asc())
        .select((WebhookDelivery::as_select(), WebhookEvent::as_select()))
        .first::<(WebhookDelivery, WebhookEvent)>(conn)
        .optional()?;
    // Not the oldest due one: a later delivery never overtakes a head that waits for its retry.
    Ok(head.filter(|(delivery, _)| delivery.next_attempt_at <= now))
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub at: i64,
    /// `delivered`, `failed`, or `pending` (with `next_attempt_at`).
    pub state: &'static str,
    pub next_attempt_at: i64,
    pub status: Option<i64>,
    pub error: Option<String>,
}

/// What [`record_attempt`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The lease was lost (another dispatcher owns the queue now); nothing was written.
    LeaseLost,
    Written,
    /// Written, and the endpoint was disabled (`disabled_reason` = `failing`): its attempts
    /// have all failed since `disable_failing_before` or earlier.
    Disabled,
}

/// Why an endpoint is disabled (`webhook_endpoints.disabled_reason`).
pub const DISABLED_MANUAL: &str = "manual";
pub const DISABLED_FAILING: &str = "failing";

/// Records an attempt on the delivery `(endpoint_id, seq)`, fenced by the endpoint lease: the
/// write happens (and the lease is extended to `lease_until`) only while `owner` holds it.
/// The endpoint's `failing_since` is cleared by a delivery and set by the first failure after
/// one; a failed attempt of an endpoint failing since `disable_failing_before` or earlier
/// disables it (reason `failing`; its pending deliveries are kept). Nothing here enables an
/// endpoint: the result of an attempt that was in flight when the endpoint was disabled is
/// recorded on the delivery, and the endpoint stays disabled (with its reason).
pub fn record_attempt(
    conn: &mut AnyConnection,
    endpoint_id: &str,
    seq: i64,
    owner: &str,
    lease_until: i64,
    attempt: &Attempt,
    disable_failing_before: Option<i64>,
) -> Result<Recorded, DbError> {
    conn.write_transaction(|conn| {
        let ours = || {
            e::webhook_endpoints
                .filter(e::id.eq(endpoint_id))
                .filter(e::lease_owner.eq(owner))
        };
        let delivered = attempt.state == DELIVERED;
        let held = if delivered {
            diesel::update(ours())
                .set((
                    e::lease_until.eq(lease_until),
                    e::failing_since.eq(None::<i64>),
                ))
                .execute(conn)?
        } else {
            diesel::update(ours())
                .set(e::lease_until.eq(lease_until))
                .execute(conn)?
        };
        if held != 1 {
            return Ok(Recorded::LeaseLost);
        }
        diesel::update(
            d::webhook_deliveries
                .filter(d::endpoint_id.eq(endpoint_id))
                .filter(d::event_seq.eq(seq)),
        )
        .set((
            d::state.eq(attempt.state),
            d::attempts.eq(d::attempts + 1),
            d::next_attempt_at.eq(attempt.next_attempt_at),
            d::last_status.eq(attempt.status),
            d::last_error.eq(attempt.error.as_deref()),
            d::last_attempt_at.eq(attempt.at),
            d::delivered_at.eq(delivered.then_some(attempt.at)),
        ))
        .execute(conn)?;
        if delivered {
            return Ok(Recorded::Written);
        }
        diesel::update(ours().filter(e::failing_since.is_null()))
            .set(e::failing_since.eq(attempt.at))
            .execute(conn)?;
        let Some(before) = disable_failing_before else {
            return Ok(Recorded::Written);
        };
        let disabled = diesel::update(
            ours()
                .filter(e::disabled_at.is_null())
                .filter(e::failing_since.le(before)),
        )
        .set((
            e::disabled_at.eq(attempt.at),
            e::disabled_reason.eq(DISABLED_FAILING),
        ))
        .execute(conn)?;
        Ok(if disabled == 1 {
            Recorded::Disabled
        } else {
            Recorded::Written
        })
    })
}

/// One page of an endpoint's deliveries (with their events), newest event last, in `seq`
/// order after `after` (whose `created_at` holds a `seq`).
pub fn list_deliveries(
    conn: &mut AnyConnection,
    tenant_id: &str,
    endpoint_id: &str,
    after: Option<&After>,
    limit: i64,
) -> Result<Page<(WebhookDelivery, WebhookEvent)>, DbError> {
    let mut query = d::webhook_deliveries
        .inner_join(ev::webhook_events)
        .filter(d::tenant_id.eq(tenant_id))
        .filter(d::endpoint_id.eq(endpoint_id))
        .into_boxed::<AnyBackend>();
    if let Some(a) = after {
        query = query.filter(d::event_seq.gt(a.created_at));
    }
    let rows = query
        .order(d::event_seq.asc())
        .limit(fetch_count(limit))
        .select((WebhookDelivery::as_select(), WebhookEvent::as_select()))
        .load(conn)?;
    Ok(Page::from_rows(
        rows,
        limit,
        |(dl, evt): &(WebhookDelivery, WebhookEvent)| After {
            created_at: dl.event_seq,
            id: evt.id.clone(),
        },
    ))
}

/// Puts the delivery of event `event_id` to the endpoint back in its queue, due at `now`, with
/// a new retry window. None if the tenant's endpoint has no delivery of that event.
pub fn replay(
    conn: &mut AnyConnection,
    tenant_id: &str,
    endpoint_id: &str,
    event_id: &str,
    now: i64,
) -> Result<Option<(WebhookDelivery, WebhookEvent)>, DbError> {
    conn.write_transaction(|conn| {
        let Some(event) = ev::webhook_events
            .filter(ev::tenant_id.eq(tenant_id))
            .filter(ev::id.eq(event_id))
            .select(WebhookEvent::as_select())
            .first(conn)
            .optional()?
        else {
            return Ok(None);
        };
        let n = diesel::update(
            d::webhook_deliveries
                .filter(d::tenant_id.eq(tenant_id))
                .filter(d::endpoint_id.eq(endpoint_id))
                .filter(d::event_seq.eq(event.seq)),
        )
        .set((
            d::state.eq(PENDING),
            d::next_attempt_at.eq(now),
            d::retry_from.eq(now),
        ))
        .execute(conn)?;
        if n != 1 {
            return Ok(None);
        }
        let delivery = d::webhook_deliveries
            .filter(d::endpoint_id.eq(endpoint_id))
            .filter(d::event_seq.eq(event.seq))
            .select(WebhookDelivery::as_select())
            .first(conn)?;
        Ok(Some((delivery, event)))
    })
}

/// Pending deliveries of every tenant (the queue-depth gauge).
pub fn pending_count(conn: &mut AnyConnection) -> Result<i64, DbError> {
    Ok(d::webhook_deliveries
        .filter(d::state.eq(PENDING))
        .count()
        .get_result(conn)?)
}

/// Events purged per batch of [`purge_finished`].
pub const PURGE_BATCH: i64 = 5_000;

/// Deletes up to [`PURGE_BATCH`] events written before `before` whose deliveries are all
/// finished (delivered or failed), with those deliveries. An event with a pending delivery
/// (even one replayed while this runs) is kept with all its rows. Single statements, no
/// read-then-write transaction (on SQLite a deferred one fails with SQLITE_BUSY instead of
/// waiting): the candidates are read, their finished deliveries deleted, then those of them
/// left without any delivery. Returns the events deleted.
pub fn purge_finished(conn: &mut AnyConnection, before: i64) -> Result<usize, DbError> {
    let pending = d::webhook_deliveries
        .filter(d::state.eq(PENDING))
        .select(d::event_seq);
    let seqs: Vec<i64> = ev::webhook_events
        .filter(ev::created_at.lt(before))
        .filter(diesel::dsl::not(ev::seq.eq_any(pending)))
        .order(ev::seq.asc())
        .limit(PURGE_BATCH)
        .select(ev::seq)
        .load(conn)?;
    if seqs.is_empty() {
        return Ok(0);
    }
    diesel::delete(
        d::webhook_deliveries
            .filter(d::event_seq.eq_any(&seqs))
            .filter(d::state.ne(PENDING)),
    )
    .execute(conn)?;
    let left = d::webhook_deliveries.select(d::event_seq);
    Ok(diesel::delete(
        ev::webhook_events
            .filter(ev::seq.eq_any(&seqs))
            .filter(diesel::dsl::not(ev::seq.eq_any(left))),
    )
    .execute(conn)?)
}

/// A change to an endpoint (`PATCH /v1/webhooks/{id}`); `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointChange {
    pub url: Option<String>,
    /// Space-separated event types; empty: every type.
    pub events: Option<String>,
    pub enabled: Option<bool>,
}

/// Applies `change` to the tenant's endpoint at `now`; None if it has no such endpoint.
/// Disabling sets `disabled_at` (reason `manual`; no delivery is queued for events emitted
/// from then on, and its pending deliveries wait). Enabling a disabled endpoint (whatever the
/// reason) clears it, the reason and `failing_since`, and makes its pending deliveries due at
/// `now` with a new retry window (the time disabled does not count).
pub fn update_endpoint(
    conn: &mut AnyConnection,
    tenant_id: &str,
    id: &str,
    change: &EndpointChange,
    now: i64,
) -> Result<Option<WebhookEndpoint>, DbError> {
    conn.write_transaction(|conn| {
        let Some(before) = find_endpoint(conn, tenant_id, id)? else {
            return Ok(None);
        };
        let target = e::webhook_endpoints.filter(e::id.eq(id));
        if let Some(url) = &change.url {
            diesel::update(target).set(e::url.eq(url)).execute(conn)?;
        }
        if let Some(events) = &change.events {
            diesel::update(target)
                .set(e::events.eq(events))
                .execute(conn)?;
        }
        match (change.enabled, before.disabled_at) {
            (Some(false), None) => {
                diesel::update(target)
                    .set((
                        e::disabled_at.eq(Some(now)),
                        e::disabled_reason.eq(DISABLED_MANUAL),
                    ))
                    .execute(conn)?;
            }
            (Some(true), Some(_)) => {
                // Enabled again (by hand or after the dispatcher disabled it for failing): a
                // new failing period starts at its next failure.
                diesel::update(target)
                    .set((
                        e::disabled_at.eq(None::<i64>),
                        e::disabled_reason.eq(None::<String>),
                        e::failing_since.eq(None::<i64>),
                    ))
                    .execute(conn)?;
                diesel::update(
                    d::webhook_deliveries
                        .filter(d::endpoint_id.eq(id))
                        .filter(d::state.eq(PENDING)),
                )
                .set((d::next_attempt_at.eq(now), d::retry_from.eq(now)))
                .execute(conn)?;
            }
            _ => {}
        }
        find_endpoint(conn, tenant_id, id)
    })
}
