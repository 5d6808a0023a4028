"""A minimal stand-in for the Hugging Face hub on 127.0.0.1: serves files the test made at
`/<org>/<repo>/resolve/<revision>/<filename>` with the headers huggingface_hub reads
(X-Repo-Commit, ETag, Content-Length), so the real download code runs end to end."""

import hashlib
import http.server
import threading


class HubServer:
    def __init__(self):
        self.files = {}  # "/timm/<repo>/resolve/main/<file>" -> bytes
        self.requests = []
        self._httpd = None

    def add(self, repo_id, filename, data, revision="main"):
        self.files[f"/{repo_id}/resolve/{revision}/{filename}"] = data

    @property
    def url(self):
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _headers(self):
                server.requests.append((self.command, self.path))
                data = server.files.get(self.path.split("?")[0])
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                self.send_response(200)
                self.send_header("X-Repo-Commit", hashlib.sha1(self.path.encode()).hexdigest())
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                return data

            def do_HEAD(self):  # noqa: N802
                self._headers()

            def do_GET(self):  # noqa: N802
                data = self._headers()
                if data is not None:
                    self.wfile.write(data)

            def log_message(self, *args):
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()
