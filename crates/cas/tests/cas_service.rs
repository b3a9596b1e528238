//! The CAS, Capabilities and Action Cache services over gRPC, including
//! every kind of bad input they must refuse.

mod common;

use bytes::Bytes;
use common::{TestServer, blob};
use lazybarn_cas::Digest;
use lazybarn_proto::reapi::{
    self, ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest, DirectoryNode, FileNode,
    FindMissingBlobsRequest, GetActionResultRequest, GetCapabilitiesRequest, GetTreeRequest,
    OutputDirectory, OutputFile, Tree, UpdateActionResultRequest,
    action_cache_client::ActionCacheClient, batch_update_blobs_request,
    capabilities_client::CapabilitiesClient,
    content_addressable_storage_client::ContentAddressableStorageClient,
};
use prost::Message;
use tonic::Code;

const BATCH: usize = 1 << 20;

async fn server() -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::disk(dir.path(), 1 << 30, BATCH).await;
    (dir, server)
}

fn update(digest: reapi::Digest, data: &[u8]) -> batch_update_blobs_request::Request {
    batch_update_blobs_request::Request {
        digest: Some(digest),
        data: Bytes::copy_from_slice(data),
        compressor: 0,
    }
}

#[tokio::test]
async fn capabilities_advertise_sha256_and_the_batch_limit() {
    let (_dir, server) = server().await;
    let caps = CapabilitiesClient::new(server.channel().await)
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .expect("capabilities")
        .into_inner();
    let cache = caps.cache_capabilities.expect("cache capabilities");
    assert_eq!(
        cache.digest_functions,
        vec![reapi::digest_function::Value::Sha256 as i32]
    );
    assert_eq!(cache.max_batch_total_size_bytes, BATCH as i64);
    assert!(
        cache
            .action_cache_update_capabilities
            .expect("ac")
            .update_enabled
    );
    let exec = caps.execution_capabilities.expect("execution capabilities");
    assert!(!exec.exec_enabled, "storage alone does not execute");
    assert_eq!(caps.low_api_version.expect("low").major, 2);
    assert_eq!(caps.high_api_version.expect("high").major, 2);
}

#[tokio::test]
async fn batch_update_reports_a_status_per_blob_and_stores_only_good_ones() {
    let (_dir, server) = server().await;
    let mut cas = ContentAddressableStorageClient::new(server.channel().await);
    let good = Digest::of(b"good");
    let claimed = Digest::of(b"claimed");
    let short = Digest::of(b"short!");
    let response = cas
        .batch_update_blobs(BatchUpdateBlobsRequest {
            instance_name: "any/instance".into(),
            requests: vec![
                update(good.to_proto(), b"good"),
                update(claimed.to_proto(), b"other!!"),
                update(
                    reapi::Digest {
                        hash: claimed.hash_hex(),
                        size_bytes: 7,
                    },
                    b"other!!",
                ),
                update(short.to_proto(), b"short"),
                update(
                    reapi::Digest {
                        hash: "ABC".into(),
                        size_bytes: 1,
                    },
                    b"x",
                ),
            ],
            digest_function: 0,
        })
        .await
        .expect("batch")
        .into_inner();
    let codes: Vec<i32> = response
        .responses
        .iter()
        .map(|r| r.status.as_ref().expect("status").code)
        .collect();
    let invalid = Code::InvalidArgument as i32;
    assert_eq!(codes, vec![0, invalid, invalid, invalid, invalid]);
    assert!(
        response.responses[4]
            .status
            .as_ref()
            .expect("status")
            .message
            .contains("ABC")
    );
    let missing = cas
        .find_missing_blobs(FindMissingBlobsRequest {
            instance_name: String::new(),
            blob_digests: vec![good.to_proto(), claimed.to_proto(), short.to_proto()],
            digest_function: 0,
        })
        .await
        .expect("find")
        .into_inner()
        .missing_blob_digests;
    assert_eq!(missing, vec![claimed.to_proto(), short.to_proto()]);
}

#[tokio::test]
async fn batches_over_the_limit_are_refused_naming_it() {
    let (_dir, server) = server().await;
    let mut cas = ContentAddressableStorageClient::new(server.channel().await);
    let (d1, b1) = blob(1, BATCH / 2 + 1);
    let (d2, b2) = blob(2, BATCH / 2 + 1);
    let err = cas
        .batch_update_blobs(BatchUpdateBlobsRequest {
            instance_name: String::new(),
            requests: vec![update(d1.to_proto(), &b1), update(d2.to_proto(), &b2)],
            digest_function: 0,
        })
        .await
        .expect_err("too big");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains(&BATCH.to_string()),
        "{}",
        err.message()
    );
    let err = cas
        .batch_read_blobs(BatchReadBlobsRequest {
            instance_name: String::new(),
            digests: vec![d1.to_proto(), d2.to_proto()],
            acceptable_compressors: vec![],
            digest_function: 0,
        })
        .await
        .expect_err("too big");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains(&BATCH.to_string()),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn malformed_digests_and_unknown_functions_are_invalid_arguments() {
    let (_dir, server) = server().await;
    let mut cas = ContentAddressableStorageClient::new(server.channel().await);
    let bad = reapi::Digest {
        hash: "0123".into(),
        size_bytes: 4,
    };
    let err = cas
        .find_missing_blobs(FindMissingBlobsRequest {
            instance_name: String::new(),
            blob_digests: vec![bad],
            digest_function: 0,
        })
        .await
        .expect_err("malformed");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("0123/4"), "{}", err.message());

    let negative = reapi::Digest {
        hash: Digest::EMPTY.hash_hex(),
        size_bytes: -1,
    };
    let err = cas
        .find_missing_blobs(FindMissingBlobsRequest {
            instance_name: String::new(),
            blob_digests: vec![negative],
            digest_function: 0,
        })
        .await
        .expect_err("negative size");
    assert_eq!(err.code(), Code::InvalidArgument);

    for function in [reapi::digest_function::Value::Md5 as i32, 999] {
        let err = cas
            .find_missing_blobs(FindMissingBlobsRequest {
                instance_name: String::new(),
                blob_digests: vec![],
                digest_function: function,
            })
            .await
            .expect_err("digest function");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("SHA256"), "{}", err.message());
    }
}

#[tokio::test]
async fn batch_read_sizes_that_overflow_when_summed_are_refused() {
    let (_dir, server) = server().await;
    let client = server.client().await;
    let (big, data) = blob(7, 2 * BATCH);
    client.upload(vec![(big, data)]).await.expect("upload");
    // Two made-up digests whose sizes, added to the real blob's, wrap a u64
    // to almost nothing: a wrapping sum would let the big blob through.
    let first = i64::MAX as u64;
    let second = (1u64 << 63) + 1 - big.size() + 10;
    let fake = |size: u64, seed: u8| reapi::Digest {
        hash: hex::encode([seed; 32]),
        size_bytes: size as i64,
    };
    let mut cas = ContentAddressableStorageClient::new(server.channel().await);
    let error = cas
        .batch_read_blobs(BatchReadBlobsRequest {
            instance_name: String::new(),
            digests: vec![big.to_proto(), fake(first, 1), fake(second, 2)],
            acceptable_compressors: vec![],
            digest_function: 0,
        })
        .await
        .expect_err("refused");
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(
        error.message().contains("max_batch_total_size_bytes"),
        "{error:?}"
    );
}

#[tokio::test]
async fn batch_read_returns_data_or_not_found_per_blob() {
    let (_dir, server) = server().await;
    let client = server.client().await;
    let (d1, b1) = blob(1, 1000);
    let (d2, _) = blob(2, 1000);
    client.upload(vec![(d1, b1.clone())]).await.expect("upload");
    let mut cas = ContentAddressableStorageClient::new(server.channel().await);
    let response = cas
        .batch_read_blobs(BatchReadBlobsRequest {
            instance_name: String::new(),
            digests: vec![d1.to_proto(), d2.to_proto(), Digest::EMPTY.to_proto()],
            acceptable_compressors: vec![],
            digest_function: 0,
        })
        .await
        .expect("read")
        .into_inner();
    let r = &response.responses;
    assert_eq!(
        (r[0].status.as_ref().expect("s").code, &r[0].data),
        (0, &b1)
    );
    assert_eq!(r[1].status.as_ref().expect("s").code, Code::NotFound as i32);
    assert_eq!(
        r[2].status.as_ref().expect("s").code,
        0,
        "empty blob is always there"
    );
}

#[tokio::test]
async fn client_uploads_small_and_large_blobs_and_reads_them_back() {
    let (_dir, server) = server().await;
    let client = server.client().await;
    assert_eq!(client.max_batch_bytes(), BATCH, "learned from Capabilities");
    let blobs: Vec<_> = (0..50)
        .map(|i| blob(i, 10_000))
        .chain([blob(99, 3 * BATCH + 7)])
        .collect();
    let uploaded = client.upload_missing(blobs.clone()).await.expect("upload");
    assert_eq!(uploaded, 51);
    assert_eq!(
        client.upload_missing(blobs.clone()).await.expect("again"),
        0
    );
    let digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    assert!(
        client
            .find_missing(&digests)
            .await
            .expect("find")
            .is_empty()
    );
    let mut read = client
        .download_batch(&digests[..50])
        .await
        .expect("batch read");
    read.sort_by_key(|(d, _)| *d);
    let mut expected = blobs[..50].to_vec();
    expected.sort_by_key(|(d, _)| *d);
    assert_eq!(read, expected);
    let (big, big_data) = &blobs[50];
    assert_eq!(&client.download(*big).await.expect("download"), big_data);
    let file = tempfile::NamedTempFile::new().expect("file");
    client
        .download_to_file(*big, file.path())
        .await
        .expect("to file");
    assert_eq!(&std::fs::read(file.path()).expect("read"), big_data);
    let part = client
        .download_range(*big, 10, Some(20))
        .await
        .expect("range");
    assert_eq!(part, big_data.slice(10..30));
}

#[tokio::test]
async fn client_uploads_a_file_through_bytestream() {
    let (_dir, server) = server().await;
    let client = server.client().await;
    let (digest, data) = blob(5, 2 * BATCH + 3);
    let file = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(file.path(), &data).expect("write");
    client
        .upload_file(digest, file.path())
        .await
        .expect("upload file");
    assert_eq!(client.download(digest).await.expect("download"), data);

    // A file shorter than its digest says ends the stream early: the upload
    // fails naming the file, and nothing is stored.
    let (digest, data) = blob(6, 2 * BATCH + 3);
    std::fs::write(file.path(), &data[..BATCH]).expect("write");
    let error = client
        .upload_file(digest, file.path())
        .await
        .expect_err("short file");
    assert!(
        error.message().contains(&file.path().display().to_string()),
        "{error:?}"
    );
    assert_eq!(
        client.find_missing(&[digest]).await.expect("find"),
        vec![digest]
    );
}

#[tokio::test]
async fn client_retries_until_the_server_comes_up() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let connect = tokio::spawn(async move {
        lazybarn_cas::CasClient::connect(&format!("grpc://{addr}"), "").await
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = lazybarn_cas::server::Storage::open(dir.path(), 1 << 20, BATCH).expect("open");
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
    tokio::spawn(lazybarn_cas::server::serve(
        listener,
        storage.routes(),
        std::future::pending(),
    ));
    let client = connect
        .await
        .expect("task")
        .expect("connected after retries");
    assert_eq!(client.max_batch_bytes(), BATCH);
}

/// A two-level tree: root -> {a, b}, a -> {c}; b and c are the same empty
/// directory, which must appear once.
async fn upload_tree(client: &lazybarn_cas::CasClient) -> (Digest, Vec<reapi::Directory>) {
    let leaf = reapi::Directory::default();
    let leaf_d = Digest::of(&leaf.encode_to_vec());
    let node = |name: &str, d: Digest| DirectoryNode {
        name: name.into(),
        digest: Some(d.to_proto()),
    };
    let a = reapi::Directory {
        directories: vec![node("c", leaf_d)],
        ..Default::default()
    };
    let a_d = Digest::of(&a.encode_to_vec());
    let root = reapi::Directory {
        directories: vec![node("a", a_d), node("b", leaf_d)],
        files: vec![FileNode {
            name: "f".into(),
            digest: Some(Digest::of(b"f").to_proto()),
            is_executable: true,
            ..Default::default()
        }],
        ..Default::default()
    };
    let root_d = Digest::of(&root.encode_to_vec());
    let all = vec![root.clone(), a.clone(), leaf.clone()];
    client
        .upload(
            all.iter()
                .map(|d| {
                    let b = d.encode_to_vec();
                    (Digest::of(&b), Bytes::from(b))
                })
                .collect(),
        )
        .await
        .expect("upload tree");
    (root_d, all)
}

#[tokio::test]
async fn get_tree_walks_every_directory_once_across_pages() {
    let (_dir, server) = server().await;
    let client = server.client().await;
    let (root, all) = upload_tree(&client).await;
    assert_eq!(client.get_tree(root).await.expect("tree"), all);

    let mut cas = ContentAddressableStorageClient::new(server.channel().await);
    let mut seen = vec![];
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let mut stream = cas
            .get_tree(GetTreeRequest {
                instance_name: String::new(),
                root_digest: Some(root.to_proto()),
                page_size: 1,
                page_token: token.clone(),
                digest_function: 0,
            })
            .await
            .expect("page")
            .into_inner();
        token.clear();
        while let Some(page) = stream.message().await.expect("message") {
            seen.extend(page.directories);
            token = page.next_page_token;
        }
        pages += 1;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!((seen, pages), (all, 3));

    let err = client
        .get_tree(Digest::of(b"no such dir"))
        .await
        .expect_err("missing root");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn action_cache_hides_results_whose_blobs_are_gone() {
    let (_dir, server) = server().await;
    let client = server.client().await;
    let mut ac = ActionCacheClient::new(server.channel().await);
    let (out_d, out) = blob(1, 100);
    let (log_d, log) = blob(2, 50);
    client
        .upload(vec![(out_d, out.clone()), (log_d, log.clone())])
        .await
        .expect("upload");
    let action = Digest::of(b"an action");
    let result = ActionResult {
        output_files: vec![OutputFile {
            path: "out".into(),
            digest: Some(out_d.to_proto()),
            ..Default::default()
        }],
        stdout_digest: Some(log_d.to_proto()),
        ..Default::default()
    };
    let update = |result: ActionResult, action: Digest| UpdateActionResultRequest {
        instance_name: "main".into(),
        action_digest: Some(action.to_proto()),
        action_result: Some(result),
        results_cache_policy: None,
        digest_function: 0,
    };
    let get = |action: Digest| GetActionResultRequest {
        instance_name: "main".into(),
        action_digest: Some(action.to_proto()),
        inline_stdout: true,
        ..Default::default()
    };
    let err = ac.get_action_result(get(action)).await.expect_err("absent");
    assert_eq!(err.code(), Code::NotFound);
    ac.update_action_result(update(result.clone(), action))
        .await
        .expect("update");
    let got = ac
        .get_action_result(get(action))
        .await
        .expect("hit")
        .into_inner();
    assert_eq!(got.output_files, result.output_files);
    assert_eq!(got.stdout_raw, log, "stdout inlined on request");

    // A result pointing at a blob the CAS lacks is a miss.
    let (gone, _) = blob(3, 10);
    let dangling = Digest::of(b"dangling action");
    let mut bad = result.clone();
    bad.stderr_digest = Some(gone.to_proto());
    ac.update_action_result(update(bad, dangling))
        .await
        .expect("update");
    let err = ac
        .get_action_result(get(dangling))
        .await
        .expect_err("dangling");
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains(&gone.to_string()),
        "{}",
        err.message()
    );

    // So is one whose output directory's tree holds a missing file.
    let tree = Tree {
        root: Some(reapi::Directory {
            files: vec![FileNode {
                name: "x".into(),
                digest: Some(gone.to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        children: vec![],
    };
    let tree_bytes = Bytes::from(tree.encode_to_vec());
    let tree_d = Digest::of(&tree_bytes);
    client
        .upload(vec![(tree_d, tree_bytes)])
        .await
        .expect("upload tree");
    let with_dir = Digest::of(b"dir action");
    let mut dir_result = result.clone();
    dir_result.output_directories = vec![OutputDirectory {
        path: "d".into(),
        tree_digest: Some(tree_d.to_proto()),
        ..Default::default()
    }];
    ac.update_action_result(update(dir_result, with_dir))
        .await
        .expect("update");
    let err = ac
        .get_action_result(get(with_dir))
        .await
        .expect_err("tree file missing");
    assert_eq!(err.code(), Code::NotFound);

    let err = ac
        .update_action_result(UpdateActionResultRequest {
            action_result: None,
            ..update(result, action)
        })
        .await
        .expect_err("no result");
    assert_eq!(err.code(), Code::InvalidArgument);
}
