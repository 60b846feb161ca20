"""The hello example's web service: answers on 127.0.0.1:$PORT and asks the api for a message."""
import json
import os
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Service discovery: the api is reachable by its name and port, as with Docker's DNS. When
# bow does not run as root the name does not resolve, and BOW_API_URL (which bow gives every
# instance for every service with a port) says where the api is.
API_URLS = ["http://api:5001", os.environ.get("BOW_API_URL", "http://api:5001")]


def ask_api():
    """The api's answer and the URL that gave it."""
    error = None
    for url in dict.fromkeys(API_URLS):
        try:
            with urllib.request.urlopen(url + "/index.json", timeout=2) as response:
                return json.load(response), url
        except OSError as failure:
            error = failure
    raise error


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            return self.reply(200, {"status": "ok"})
        try:
            api, via = ask_api()
        except OSError as error:
            # The page still answers; it says what it could not reach.
            api, via = {"unreachable": API_URLS, "error": str(error)}, None
        return self.reply(200, {"greeting": os.environ.get("GREETING", "hello"),
                                "api": api, "via": via,
                                "instance": os.environ.get("BOW_INSTANCE", "")})

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
