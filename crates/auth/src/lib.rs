//! Who is calling, and may they: Lazybarn's authentication and
//! authorization.
//!
//! So far it knows bearer tokens and one right, the worker protocol; TLS,
//! client identities and per-instance policy are still to come. How the
//! pieces fit, in the order a call meets them:
//!
//! - A caller presents a token in the `authorization: Bearer <token>`
//!   metadata of every call; a worker does so with [`BearerToken`], a tonic
//!   interceptor on its channel that reads the token from a file.
//! - The server knows tokens only by their SHA-256 digest, from a
//!   [`Tokens`] file (one line per token: digest, identity name, groups).
//!   [`Tokens::authenticate`] turns a call's metadata into an [`Identity`]:
//!   the token's owner, [`Identity::anonymous`] when there is no header, or
//!   UNAUTHENTICATED saying why (a malformed header, an unknown token; the
//!   token itself is never repeated).
//! - [`Gate`] is the interceptor a service is wrapped in: [`Gate::Open`]
//!   lets every call through, [`Gate::group`] lets through only identities
//!   of one group, answering PERMISSION_DENIED naming the identity and the
//!   right otherwise (UNAUTHENTICATED for a caller with no credentials, who
//!   could do better by presenting one). It leaves the [`Identity`] in the
//!   request's extensions for the service.
//!
//! Every permission decision is made here, in [`Gate`], so that services
//! never re-implement one. New tokens come from [`generate_token`], and
//! [`tokens_file_line`] writes the line that admits one.

mod client;
mod gate;
mod identity;
mod tokens;

pub use client::BearerToken;
pub use gate::Gate;
pub use identity::Identity;
pub use tokens::{Tokens, TokensError, generate_token, token_digest, tokens_file_line};
