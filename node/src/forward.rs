//! `trellis mesh kube-forward --name MESH`: the host's way in to the API
//! server, which runs in the node's network namespace. It listens on
//! `127.0.0.1:<a free port>` in the host's namespace (the port goes into
//! the record, for the user's kubeconfig) and joins each connection to the
//! API server with a socket made inside the node namespace. Nothing is
//! routed between the host and the mesh.
//!
//! It exits by itself once the mesh's state directory is gone.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::Context;
use trellis_core::errln;
use trellis_mesh::sys;

use crate::record::{Record, API_PORT};

/// How often it checks that the mesh still exists.
const CHECK_EVERY: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(mesh: &str) -> anyhow::Result<()> {
    let record = Record::load(mesh)?;
    let listener = TcpListener::bind("127.0.0.1:0").context("listening on 127.0.0.1")?;
    let port = listener.local_addr()?.port();
    std::fs::write(Record::dir(mesh).join("forward.port"), port.to_string())
        .context("writing forward.port")?;
    errln!(
        "forwarding 127.0.0.1:{port} to the API server in {}",
        record.node_netns
    );
    let dir = Record::dir(mesh);
    std::thread::spawn(move || loop {
        std::thread::sleep(CHECK_EVERY);
        if !dir.exists() {
            errln!("the mesh's state directory is gone; exiting");
            std::process::exit(0);
        }
    });
    let upstream = SocketAddr::from(([127, 0, 0, 1], API_PORT));
    for conn in listener.incoming() {
        let Ok(client) = conn else { continue };
        let netns = record.node_netns.clone();
        std::thread::spawn(move || {
            if let Err(e) = join(client, &netns, upstream) {
                errln!("forwarding a connection: {e}");
            }
        });
    }
    Ok(())
}

fn join(client: TcpStream, netns: &str, upstream: SocketAddr) -> io::Result<()> {
    let server = sys::connect_in_netns(netns, upstream, CONNECT_TIMEOUT)?;
    let (mut c_read, mut s_write) = (client.try_clone()?, server.try_clone()?);
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    let _ = io::copy(&mut s_read, &mut c_write);
    let _ = c_write.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}
