"""The hello example's web service: answers on 127.0.0.1:$PORT and asks the api for a message."""
import json
import os
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# bow gives every instance BOW_<SERVICE>_URL for each service (service discovery).
API_URL = os.environ.get("BOW_API_URL", "http://api:5001")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            return self.reply(200, {"status": "ok"})
        try:
            with urllib.request.urlopen(API_URL + "/index.json", timeout=2) as response:
                api = json.load(response)
        except OSError as error:
            # The page still answers; it says what it could not reach.
            api = {"unreachable": API_URL, "error": str(error)}
        return self.reply(200, {"greeting": os.environ.get("GREETING", "hello"),
                                "api": api, "instance": os.environ.get("BOW_INSTANCE", "")})

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


if __name__ == "__main__":
    port = int(os.environ["PORT"])
    print(f"web listening on 127.0.0.1:{port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
