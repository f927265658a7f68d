//! Peers that misbehave on purpose, on 127.0.0.1: for the tests that prove every wait has a limit.

/// A listener that accepts connections and, when `head` is given, sends it once the request is in
/// and then nothing more; connections stay open until the listener is dropped.
pub struct Stalling {
    pub addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Stalling {
    pub async fn start(head: Option<&'static [u8]>) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                if let Some(head) = head {
                    // Answer only once the request is in: a client ignores an answer before it asked.
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = socket.write_all(head).await;
                }
                open.push(socket);
            }
        });
        Stalling { addr, task }
    }
}

impl Drop for Stalling {
    fn drop(&mut self) {
        self.task.abort();
    }
}
