//! The deletion routes: delete a key (soft or for good, as the vault keeps deleted keys),
//! and read, list, recover and purge deleted keys (`/deletedkeys`).

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::wire::{
    add_deleted_fields, bundle_json, deleted_bundle_json, item_json, page_json, paging,
};
use super::{DataPlaneState, Handled, RequestContext};
use crate::access::DataPlaneAction;
use crate::model::KeyPermission;

pub(super) async fn delete_key(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Path(name): Path<String>,
) -> Handled {
    context
        .authorize(
            &state,
            DataPlaneAction::key(KeyPermission::Delete),
            Some(&name),
        )
        .await?;
    let deleted = state.service.delete_key(&context.vault, &name).await?;
    Ok(Json(deleted_bundle_json(&deleted)).into_response())
}

pub(super) async fn get_deleted_key(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Path(name): Path<String>,
) -> Handled {
    context
        .authorize(
            &state,
            DataPlaneAction::read_deleted(KeyPermission::Get),
            Some(&name),
        )
        .await?;
    let deleted = state.service.get_deleted_key(&context.vault, &name).await?;
    Ok(Json(deleted_bundle_json(&deleted)).into_response())
}

pub(super) async fn list_deleted_keys(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Query(query): Query<HashMap<String, String>>,
) -> Handled {
    context
        .authorize(
            &state,
            DataPlaneAction::read_deleted(KeyPermission::List),
            None,
        )
        .await?;
    let (max_results, token) = paging(&query)?;
    let page = state
        .service
        .list_deleted_keys(&context.vault, max_results, token.as_deref())
        .await?;
    Ok(Json(page_json(
        &context,
        "deletedkeys",
        page,
        max_results,
        |deleted| {
            let mut body = item_json(&deleted.bundle, false);
            add_deleted_fields(&mut body, deleted);
            body
        },
    ))
    .into_response())
}

pub(super) async fn recover_deleted_key(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Path(name): Path<String>,
) -> Handled {
    context
        .authorize(
            &state,
            DataPlaneAction::key(KeyPermission::Recover),
            Some(&name),
        )
        .await?;
    let bundle = state
        .service
        .recover_deleted_key(&context.vault, &name)
        .await?;
    Ok(Json(bundle_json(&bundle)).into_response())
}

pub(super) async fn purge_deleted_key(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Path(name): Path<String>,
) -> Handled {
    context
        .authorize(
            &state,
            DataPlaneAction::key(KeyPermission::Purge),
            Some(&name),
        )
        .await?;
    state
        .service
        .purge_deleted_key(&context.vault, &name)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
