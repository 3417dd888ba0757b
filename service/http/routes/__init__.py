"""One router per resource; service.http.app includes them all."""
