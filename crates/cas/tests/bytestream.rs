//! ByteStream over gRPC: ranged reads, verified and resumable writes, and
//! the offsets, sizes and hashes a server must refuse.

mod common;

use bytes::Bytes;
use common::{TestServer, blob};
use lazybarn_cas::Digest;
use lazybarn_proto::bytestream::{
    QueryWriteStatusRequest, ReadRequest, WriteRequest, byte_stream_client::ByteStreamClient,
};
use tonic::Code;
use tonic::transport::Channel;

async fn server() -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::disk(dir.path(), 1 << 30, 1 << 20).await;
    (dir, server)
}

fn upload_name(digest: Digest, uuid: &str) -> String {
    format!(
        "inst/uploads/{uuid}/blobs/{}/{}",
        digest.hash_hex(),
        digest.size()
    )
}

fn req(name: &str, offset: usize, data: &[u8], finish: bool) -> WriteRequest {
    WriteRequest {
        resource_name: name.to_string(),
        write_offset: offset as i64,
        finish_write: finish,
        data: Bytes::copy_from_slice(data),
    }
}

async fn write(channel: &Channel, requests: Vec<WriteRequest>) -> Result<i64, tonic::Status> {
    ByteStreamClient::new(channel.clone())
        .write(futures::stream::iter(requests))
        .await
        .map(|r| r.into_inner().committed_size)
}

async fn read(
    channel: &Channel,
    name: String,
    offset: i64,
    limit: i64,
) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = ByteStreamClient::new(channel.clone())
        .read(ReadRequest {
            resource_name: name,
            read_offset: offset,
            read_limit: limit,
        })
        .await?
        .into_inner();
    let mut out = vec![];
    while let Some(chunk) = stream.message().await? {
        out.extend_from_slice(&chunk.data);
    }
    Ok(out)
}

async fn stored(server: &TestServer, digest: Digest) -> bool {
    server
        .storage
        .store
        .contains(&digest)
        .await
        .expect("contains")
}

#[tokio::test]
async fn write_then_read_whole_and_ranges() {
    let (_dir, server) = server().await;
    let channel = server.channel().await;
    let (d, data) = blob(1, 3_000_000);
    let name = upload_name(d, "u1");
    let requests = data
        .chunks(700_000)
        .enumerate()
        .map(|(i, c)| {
            req(
                if i == 0 { &name } else { "" },
                i * 700_000,
                c,
                (i + 1) * 700_000 >= data.len(),
            )
        })
        .collect();
    assert_eq!(
        write(&channel, requests).await.expect("write"),
        d.size() as i64
    );
    let blob_name = format!("inst/blobs/{}/{}", d.hash_hex(), d.size());
    assert_eq!(
        read(&channel, blob_name.clone(), 0, 0).await.expect("read"),
        data
    );
    assert_eq!(
        read(&channel, blob_name.clone(), 5, 10)
            .await
            .expect("range"),
        &data[5..15]
    );
    assert_eq!(
        read(&channel, blob_name.clone(), 2_999_990, 100)
            .await
            .expect("tail"),
        &data[2_999_990..]
    );
    assert!(
        read(&channel, blob_name.clone(), 3_000_000, 0)
            .await
            .expect("at end")
            .is_empty()
    );

    let err = read(&channel, blob_name.clone(), 3_000_001, 0)
        .await
        .expect_err("past end");
    assert_eq!(err.code(), Code::OutOfRange);
    let err = read(&channel, blob_name.clone(), -1, 0)
        .await
        .expect_err("negative");
    assert_eq!(err.code(), Code::OutOfRange);
    let err = read(&channel, blob_name, 0, -1)
        .await
        .expect_err("negative limit");
    assert_eq!(err.code(), Code::InvalidArgument);
    let (missing, _) = blob(2, 10);
    let err = read(&channel, format!("blobs/{}/10", missing.hash_hex()), 0, 0)
        .await
        .expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn hash_and_size_mismatches_store_nothing() {
    let (_dir, server) = server().await;
    let channel = server.channel().await;
    let (d, data) = blob(1, 1000);
    let mut wrong = data.to_vec();
    wrong[500] ^= 1;
    let err = write(&channel, vec![req(&upload_name(d, "a"), 0, &wrong, true)])
        .await
        .expect_err("hash");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains(&d.to_string()), "{}", err.message());

    let err = write(
        &channel,
        vec![req(&upload_name(d, "b"), 0, &data[..999], true)],
    )
    .await
    .expect_err("short");
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut long = data.to_vec();
    long.push(0);
    let err = write(&channel, vec![req(&upload_name(d, "c"), 0, &long, true)])
        .await
        .expect_err("long");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(!stored(&server, d).await);
    let tmp = std::fs::read_dir(_dir.path().join("cas/tmp"))
        .expect("tmp")
        .count();
    assert_eq!(tmp, 0, "failed writes leave no temporary files");
}

#[tokio::test]
async fn offsets_that_skip_or_rewind_are_refused() {
    let (_dir, server) = server().await;
    let channel = server.channel().await;
    let (d, data) = blob(1, 1000);
    let name = upload_name(d, "skip");
    let err = write(
        &channel,
        vec![
            req(&name, 0, &data[..100], false),
            req("", 200, &data[200..], true),
        ],
    )
    .await
    .expect_err("skip");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("expected 100"), "{}", err.message());
    let name = upload_name(d, "rewind");
    let err = write(
        &channel,
        vec![
            req(&name, 0, &data[..100], false),
            req("", 50, &data[50..], true),
        ],
    )
    .await
    .expect_err("rewind");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = write(
        &channel,
        vec![req(&upload_name(d, "late"), 10, &data[10..], true)],
    )
    .await
    .expect_err("first offset");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = write(
        &channel,
        vec![
            req(&upload_name(d, "x"), 0, &data[..10], false),
            req("other/uploads/y/blobs/x/1", 10, &data[10..], true),
        ],
    )
    .await
    .expect_err("switched name");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(!stored(&server, d).await);
}

#[tokio::test]
async fn interrupted_writes_resume_from_committed_size() {
    let (_dir, server) = server().await;
    let channel = server.channel().await;
    let (d, data) = blob(7, 500_000);
    let name = upload_name(d, "resumable");
    let query = || async {
        ByteStreamClient::new(channel.clone())
            .query_write_status(QueryWriteStatusRequest {
                resource_name: name.clone(),
            })
            .await
            .map(|r| r.into_inner())
    };
    assert_eq!(query().await.expect_err("unknown").code(), Code::NotFound);

    // The client closes its side after 200,000 bytes without finishing.
    let committed = write(&channel, vec![req(&name, 0, &data[..200_000], false)])
        .await
        .expect("partial");
    assert_eq!(committed, 200_000);
    let status = query().await.expect("status");
    assert_eq!((status.committed_size, status.complete), (200_000, false));
    assert!(!stored(&server, d).await);

    let committed = write(&channel, vec![req(&name, 200_000, &data[200_000..], true)])
        .await
        .expect("resume");
    assert_eq!(committed, d.size() as i64);
    let status = query().await.expect("status");
    assert_eq!(
        (status.committed_size, status.complete),
        (d.size() as i64, true)
    );
    assert_eq!(
        server.client().await.download(d).await.expect("read back"),
        data
    );

    // Writing a blob that is already stored answers at once with its size.
    let again = write(
        &channel,
        vec![req(&upload_name(d, "again"), 0, &data[..10], false)],
    )
    .await
    .expect("dedup");
    assert_eq!(again, d.size() as i64);
}

#[tokio::test]
async fn many_concurrent_writers_of_one_blob_all_succeed() {
    let (_dir, server) = server().await;
    let channel = server.channel().await;
    let (d, data) = blob(3, 2_000_000);
    let writers = (0..12).map(|i| {
        let channel = channel.clone();
        let data = data.clone();
        tokio::spawn(async move {
            let name = upload_name(d, &format!("writer-{i}"));
            let requests = data
                .chunks(250_000)
                .enumerate()
                .map(|(j, c)| req(&name, j * 250_000, c, (j + 1) * 250_000 >= data.len()))
                .collect();
            write(&channel, requests).await
        })
    });
    for w in writers.collect::<Vec<_>>() {
        assert_eq!(w.await.expect("task").expect("write"), d.size() as i64);
    }
    assert_eq!(server.client().await.download(d).await.expect("read"), data);
    assert_eq!(
        server.storage.disk.as_ref().expect("disk").stored_bytes(),
        d.size()
    );
}

#[tokio::test]
async fn bad_resource_names_are_refused() {
    let (_dir, server) = server().await;
    let channel = server.channel().await;
    let err = read(&channel, "inst/blobs/abc/3".into(), 0, 0)
        .await
        .expect_err("bad hash");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("inst/blobs/abc/3"),
        "{}",
        err.message()
    );
    let (d, data) = blob(1, 10);
    let err = write(
        &channel,
        vec![req(
            &format!("inst/blobs/{}/10", d.hash_hex()),
            0,
            &data,
            true,
        )],
    )
    .await
    .expect_err("no uploads/uuid");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = write(
        &channel,
        vec![req(
            &format!("inst/uploads/u/compressed-blobs/zstd/{}/10", d.hash_hex()),
            0,
            &data,
            true,
        )],
    )
    .await
    .expect_err("compressed");
    assert_eq!(err.code(), Code::Unimplemented);
}
