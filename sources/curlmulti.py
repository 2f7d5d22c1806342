"""One step of a pycurl ``CurlMulti``, shared by the small-file runner
(``sources.http.batch``) and the URL-list fetcher (``sources.urllist.fetch``)."""

from __future__ import annotations

import pycurl


def perform_and_collect(multi: pycurl.CurlMulti) -> list[tuple[pycurl.Curl, int, str]]:
    """Let ``multi`` do the work it can without waiting, then return every transfer that
    ended since the last call as ``(handle, curl errno, message)``: errno 0 for a
    transfer that completed (its HTTP status is still the caller's to read)."""
    while True:
        ret, _ = multi.perform()
        if ret != pycurl.E_CALL_MULTI_PERFORM:
            break
    finished: list[tuple[pycurl.Curl, int, str]] = []
    while True:
        queued, ok_list, err_list = multi.info_read()
        finished.extend((c, 0, "") for c in ok_list)
        finished.extend(err_list)
        if not queued:
            return finished
