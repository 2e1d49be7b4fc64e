import requests
import base64
import json
 
# Define the URL and the payload to send.
url = "https://modelapi.holmesai.xyz/$SERVICE_ID/v1/images/control"
 
# Set Authorization header
Headers = { "Authorization" : "Bearer {}".format("$API_KEY") }
file_path = "input.png"
 
with open(file_path, 'rb') as image_file:
    payload = {
        "model": "$MODEL",
        "prompt": "Put glassed on the dog",
        "negative_prompt": "",
        "steps": 30,
        "cfg_scale": 10,
    }
    files = {
        'image': (file_path, image_file.read(), 'application/octet-stream'),  # Binary file
        "model": "$MODEL",
    }
 
    # Send said payload to said URL through the API.
    response = requests.post(url=f'{url}', files=files, data=payload, headers=Headers)
 
    # Decode and save the image.
    with open("output.png", 'wb') as f:
        for chunk in response.iter_content(chunk_size=8192):
            f.write(chunk)
