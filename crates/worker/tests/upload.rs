//! Output upload against a real in-process CAS.

use std::os::unix::fs::PermissionsExt;

use lazybarn_cas::server::{Loopback, Storage};
use lazybarn_cas::{CasClient, Digest};
use lazybarn_proto::reapi::{ActionResult, Command};
use lazybarn_worker::{outputs, upload};

#[tokio::test]
async fn uploads_only_what_the_cas_lacks_and_the_result_is_complete() {
    let storage = Storage::in_memory(1 << 30, 1 << 20);
    let server = Loopback::serve(storage.routes())
        .await
        .expect("serve on loopback");
    let cas = CasClient::connect(&server.url(), "")
        .await
        .expect("connect");

    let root = tempfile::tempdir().expect("tempdir");
    let out = root.path().join("out");
    std::fs::create_dir_all(out.join("sub")).expect("mkdir");
    std::fs::write(out.join("small"), b"small output").expect("write");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(out.join("sub/big"), &big).expect("write");
    std::fs::set_permissions(out.join("small"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    cas.upload(vec![(
        Digest::of(b"small output"),
        bytes::Bytes::from_static(b"small output"),
    )])
    .await
    .expect("pre-upload one blob");

    let command = Command {
        output_paths: vec!["out".into()],
        ..Default::default()
    };
    let captured =
        outputs::capture(root.path(), &command, outputs::OutputLimits::NONE).expect("capture");
    let mut result = ActionResult::default();
    let blobs = captured.into_result(&mut result);
    let stats = upload::upload_blobs(&cas, blobs).await.expect("upload");
    assert_eq!(stats.blobs_present, 1, "the small file was already there");
    assert_eq!(stats.blobs_uploaded, 2, "the big file and the tree");
    let tree = result.output_directories[0]
        .tree_digest
        .clone()
        .expect("tree");
    let tree = Digest::from_proto(Some(&tree)).expect("digest");
    assert!(
        cas.find_missing(&[tree, Digest::of(&big)])
            .await
            .expect("find")
            .is_empty()
    );
    assert_eq!(cas.download(Digest::of(&big)).await.expect("download"), big);
}
